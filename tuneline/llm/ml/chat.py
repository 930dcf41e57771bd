"""Chat formatting: render records with the tokenizer's chat template and label assistant tokens only.

The text a record trains on is what inference sees plus what the model must produce: the conversation without
its final answer rendered with the generation prompt (exactly ``prompt_ids``), followed by the final answer as
the template renders it, up to and including its end-of-turn marker. Earlier assistant turns are trained on
where they sit in that prompt. A target starts where the generation prompt of its turn ends, so it covers what
the template puts between that prompt and the content (Mistral's leading space, Qwen3's think block).

Makers' templates are not prefix-stable, so no turn is located by comparing renders of growing prefixes:
Mistral v0.3 moves the system message into the last user turn, Qwen3 drops the think block of every assistant
turn before the last user turn, Llama 3.x stamps the render date into the system header. Instead each assistant
content is wrapped in private-use marker characters, the conversation is rendered once, and the markers give
the spans; the render without markers must equal the plain render, so markers never change what is trained on.
A template with ``{% generation %}`` blocks names its own spans, and those are used as given.

Each segment is tokenised as it falls in the text up to its end (``_piece_ids``), so the context tokens are
exactly the tokens the generation prompt produces at inference time and a label boundary never splits a token.
A record the template cannot express (roles out of order, a message the template leaves out) raises
``TemplateError`` with the reason; callers quarantine it (``encode_all``) instead of failing the step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneline.llm.ml.data import Example

IGNORE = -100
# Llama 3.x templates print "Today Date: <strftime_now>" unless given date_string: the same record would tokenise
# differently on the day a resumed run continues. This is the templates' own fallback date. Serving renders with
# the same variables (training_summary.json chat_template_kwargs -> serving.json), or the served prompt would be
# one the model never saw in training.
# Qwen3's template ends the generation prompt with the empty think block only when enable_thinking is false, yet
# renders that block before every final answer either way: without it the model learns to write the block itself,
# and "<think>"/"</think>" are not special tokens in Qwen3's tokenizer (Qwen/Qwen3-8B tokenizer_config.json,
# added_tokens_decoder "special": false), so they stay in every decoded answer. With it the block is part of the
# prompt and the answer is the answer alone. Templates without the variable ignore it.
RENDER_KWARGS = {"date_string": "26 Jul 2024", "enable_thinking": False}
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use code points: no tokenizer vocabulary or dataset means them
_MARK = re.compile(f"[{_OPEN}{_CLOSE}][0-9]+[{_OPEN}{_CLOSE}]")
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")
# How far a suffix match of the generation prompt is compared: enough to tell a turn header from a lookalike.
_MATCH_CAP = 512


class TemplateError(ValueError):
    """The chat template cannot express this record (or cannot be aligned with it)."""


@dataclass(frozen=True)
class Encoded:
    id: str
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token is context, else the token id itself
    truncated: bool

    @property
    def n_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass(frozen=True)
class Rejected:
    id: str
    reason: str


def render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                             **RENDER_KWARGS)
    except TemplateError:
        raise
    except Exception as err:  # noqa: BLE001 - jinja's raise_exception and template bugs alike: the record is the cause
        raise TemplateError(f"the chat template rejects this conversation: {' '.join(str(err).split())}") from err


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _open(k: int) -> str:
    return f"{_OPEN}{k}{_OPEN}"


def _close(k: int) -> str:
    return f"{_CLOSE}{k}{_CLOSE}"


def _wrap(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Assistant contents wrapped in numbered markers, inside their surrounding whitespace (templates trim)."""
    out = []
    for k, msg in enumerate(messages):
        if msg["role"] == "assistant":
            text = msg["content"]
            core = text.strip()
            lead = text[: len(text) - len(text.lstrip())]
            trail = text[len(text.rstrip()):]
            msg = {**msg, "content": f"{lead}{_open(k)}{core}{_close(k)}{trail}"}
        out.append(msg)
    return out


def _strip(text: str, spans: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    """``text`` without markers, and ``spans`` moved to the same characters of the stripped text."""
    cuts = [(m.start(), m.end()) for m in _MARK.finditer(text)]

    def moved(pos: int) -> int:
        return pos - sum(min(end, pos) - start for start, end in cuts if start < pos)

    return _MARK.sub("", text), [(moved(a), moved(b)) for a, b in spans]


def _common_suffix(a: str, a_end: int, b: str) -> int:
    n, limit = 0, min(a_end, len(b), _MATCH_CAP)
    while n < limit and a[a_end - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return n


def _prompt_end(text: str, lo: int, hi: int, prompt: str) -> int:
    """The position in ``text[lo:hi]`` where the generation prompt of a turn ends: the one whose preceding text
    agrees longest with the end of ``prompt`` (the render inference would use), the later one on a tie."""
    if text.startswith(prompt) and lo <= len(prompt) <= hi:
        return len(prompt)
    best, best_len = hi, -1
    for pos in range(hi, lo - 1, -1):
        n = _common_suffix(text, pos, prompt)
        if n > best_len:
            best, best_len = pos, n
            if n >= min(len(prompt), _MATCH_CAP):
                break
    return best


def _common_prefix(a: str, a_start: int, b: str, b_start: int) -> int:
    n = 0
    while a_start + n < len(a) and b_start + n < len(b) and a[a_start + n] == b[b_start + n]:
        n += 1
    return n


def _marked_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    for i, msg in enumerate(messages):
        if _OPEN in msg["content"] or _CLOSE in msg["content"]:
            raise TemplateError(f"messages[{i}] holds the private-use characters U+E000/U+E001")
    wrapped = _wrap(messages)
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    last = turns[-1]
    prompt = render(tokenizer, wrapped[:last], generation_prompt=True)
    through = render(tokenizer, wrapped[: last + 1], generation_prompt=False)
    close = through.find(_close(last))
    if close < 0:
        raise TemplateError(f"the chat template leaves out the final answer (messages[{last}])")
    start = _prompt_end(through, 0, _first(through, last, close), prompt)
    if messages[last]["content"].strip() not in _MARK.sub("", through[start:close]):
        # Qwen3 with enable_thinking false: the prompt already holds the (empty) think block, so the reasoning of
        # a final answer would silently not be trained on.
        raise TemplateError(f"the generation prompt already covers part of the final answer (messages[{last}]): "
                            f"rendered with {RENDER_KWARGS}, only the rest would be trained on")
    text = prompt + through[start:]
    spans = [(len(prompt), len(text))]
    cursor = 0
    earlier: list[tuple[int, int]] = []
    for k in turns[:-1]:
        close = text.find(_close(k), cursor)
        if close < 0:
            raise TemplateError(f"the chat template leaves out the assistant turn messages[{k}] from the history")
        own_prompt = render(tokenizer, wrapped[:k], generation_prompt=True)
        begin = _prompt_end(text, cursor, _first(text, k, close, cursor), own_prompt)
        own = render(tokenizer, wrapped[: k + 1], generation_prompt=False)
        own_close = own.find(_close(k))
        end = close + len(_close(k))
        if own_close >= 0:  # the end-of-turn marker: what follows the content when this turn ends the render
            end += _common_prefix(text, end, own, own_close + len(_close(k)))
        earlier.append((begin, end))
        cursor = end
    return text, earlier + spans


def _first(text: str, k: int, close: int, lo: int = 0) -> int:
    """Where turn k's content starts (its opening marker), or its end when the template moved the opening one
    (Qwen3 splits a think block off the content)."""
    opened = text.find(_open(k), lo, close)
    return opened if opened >= 0 else close


def spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The text to train on and the character spans of it that the model learns to produce, in order."""
    if not messages or messages[-1]["role"] != "assistant":
        raise TemplateError("a record must end with an assistant turn")
    marked, marked_spans = _marked_spans(tokenizer, messages)
    text, out = _strip(marked, marked_spans)
    last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
    prompt = render(tokenizer, messages[:last], generation_prompt=True)
    through = render(tokenizer, messages, generation_prompt=False)
    if not text.startswith(prompt) or text[len(prompt):] not in through:
        raise TemplateError("the chat template renders an answer differently when it is marked; "
                            "the answer spans cannot be located")
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" and msg["content"].strip() and msg["content"].strip() not in text:
            raise TemplateError(f"the chat template leaves out messages[{i}] ({msg['role']}) "
                                "from the rendered conversation")
    return text, out


def _generation_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and 0/1 assistant mask from the template's own ``{% generation %}`` blocks."""
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=False,
                                            return_assistant_tokens_mask=True, **RENDER_KWARGS)
    except Exception as err:  # noqa: BLE001 - see render()
        raise TemplateError(f"the chat template rejects this conversation: {' '.join(str(err).split())}") from err
    return list(out["input_ids"]), list(out["assistant_masks"])


def encode(tokenizer, record: Example, max_seq_len: int) -> Encoded:
    if _GENERATION_BLOCK.search(tokenizer.chat_template or ""):
        ids, mask = _generation_spans(tokenizer, record.messages)
        if not any(mask):
            raise TemplateError("the chat template's {% generation %} blocks mark no token of this record")
        input_ids = ids
        labels = [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]
    else:
        text, targets = spans(tokenizer, record.messages)
        input_ids, labels = [], []
        cursor = 0
        for begin, end in [*targets, (len(text), len(text))]:
            for stop, target in ((begin, False), (end, True)):
                if stop <= cursor:
                    continue
                ids = _piece_ids(tokenizer, text, cursor, stop, input_ids)
                input_ids.extend(ids)
                labels.extend(ids if target else [IGNORE] * len(ids))
                cursor = stop
    truncated = len(input_ids) > max_seq_len
    return Encoded(record.id, input_ids[:max_seq_len], labels[:max_seq_len], truncated)


def _piece_ids(tokenizer, text: str, start: int, stop: int, before: list[int]) -> list[int]:
    """Tokens of ``text[start:stop]`` as they fall in the whole text: the tokens of ``text[:stop]`` after
    ``before`` (those of ``text[:start]``). A piece tokenised on its own can differ: a SentencePiece-style
    (Metaspace, prepend_scheme "first") tokenizer marks the start of every call with a word boundary, so a
    context piece after an earlier answer would begin with a "▁" that the whole prompt, as inference tokenises
    it, does not have. Where a token spans the boundary (the prefix of ``text[:stop]`` is not ``before``), the
    piece is tokenised on its own, so a label boundary never splits a token."""
    ids = _ids(tokenizer, text[:stop])
    if ids[: len(before)] == before:
        return ids[len(before):]
    return _ids(tokenizer, text[start:stop])


def encode_all(tokenizer, records: list[Example], max_seq_len: int) -> tuple[list[Encoded], list[Rejected]]:
    """Encode every record the chat template can express; the others are quarantined with the reason."""
    encoded: list[Encoded] = []
    rejected: list[Rejected] = []
    for record in records:
        try:
            encoded.append(encode(tokenizer, record, max_seq_len))
        except TemplateError as err:
            rejected.append(Rejected(record.id, str(err)))
    return encoded, rejected


def prompt_ids(tokenizer, record: Example) -> list[int]:
    """Token ids of the conversation without its final answer, ending with the generation prompt."""
    return _ids(tokenizer, render(tokenizer, record.prompt, generation_prompt=True))
