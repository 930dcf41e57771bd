"""Chat formatting: render records with the tokenizer's chat template and label assistant tokens only.

Each conversation is rendered as alternating segments: everything up to an assistant turn (including the
generation prompt, e.g. ``<|im_start|>assistant\\n``) is context, the assistant's content and its end-of-turn
marker are targets. Segments are tokenised one by one, so the context tokens are exactly the tokens a
generation prompt produces at inference time, and the label boundary never splits a token.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneline.ml.data import Example

IGNORE = -100


class TemplateError(ValueError):
    """The chat template does not render conversations as a sequence of growing prefixes."""


@dataclass(frozen=True)
class Encoded:
    id: str
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token is context, else the token id itself
    truncated: bool

    @property
    def n_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def segments(tokenizer, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """``[(text, is_target), ...]`` whose concatenation is the full rendered conversation."""
    out: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not prefix.startswith(done) or not through.startswith(prefix):
            raise TemplateError(
                f"the chat template does not render message {i} as an extension of the previous turns; "
                "assistant-only labels need a prefix-stable template"
            )
        out.append((prefix[len(done):], False))
        out.append((through[len(prefix):], True))
        done = through
    full = render(tokenizer, messages, generation_prompt=False)
    if len(full) > len(done):
        out.append((full[len(done):], False))
    return out


def encode(tokenizer, record: Example, max_seq_len: int) -> Encoded:
    input_ids: list[int] = []
    labels: list[int] = []
    for text, target in segments(tokenizer, record.messages):
        ids = _ids(tokenizer, text)
        input_ids.extend(ids)
        labels.extend(ids if target else [IGNORE] * len(ids))
    truncated = len(input_ids) > max_seq_len
    return Encoded(record.id, input_ids[:max_seq_len], labels[:max_seq_len], truncated)


def prompt_ids(tokenizer, record: Example) -> list[int]:
    """Token ids of the conversation without its final answer, ending with the generation prompt."""
    return _ids(tokenizer, render(tokenizer, record.prompt, generation_prompt=True))
