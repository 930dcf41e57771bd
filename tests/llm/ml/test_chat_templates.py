"""Assistant-only labels under the chat templates the model makers publish (tests/fixtures/chat-templates)."""

import json

import pytest

from tests.llm.ml.families import FAMILIES, SHAPES, tokenizer
from tuneline.llm.ml.chat import IGNORE, TemplateError, encode, encode_all, prompt_ids, spans
from tuneline.llm.ml.data import Example

ANSWERS = {"single": ['{"team": "hw"}'], "multi": ['{"team": "hw"}', '{"team": "it"}']}
# What each family's template puts around an answer the model has to produce: (before, after).
AROUND = {"llama3": ("", "<|eot_id|>"), "qwen2.5": ("", "<|im_end|>\n"), "mistral": (" ", "</s>"),
          "gemma3": ("", "<end_of_turn>\n"), "qwen3": ("", "<|im_end|>\n")}


def _targets(tok, encoded) -> str:
    return tok.decode([t for t in encoded.labels if t != IGNORE])


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_labels_exactly_its_answers(family, shape):
    tok = tokenizer(FAMILIES[family])
    record = Example("r", SHAPES[shape])
    encoded = encode(tok, record, max_seq_len=4096)
    before, after = AROUND[family]
    answers = ANSWERS[shape.split("+")[0]]
    expected = "".join(f"{before}{a}{after}" for a in answers)
    assert _targets(tok, encoded) == expected
    # Training sees exactly the tokens inference will be given for the final answer, then the answer.
    prompt = prompt_ids(tok, record)
    assert encoded.input_ids[: len(prompt)] == prompt
    assert encoded.labels[len(prompt)] != IGNORE and all(x == IGNORE for x in encoded.labels[: len(prompt)][-3:])
    if "system" in shape:
        assert "Answer in JSON." in tok.decode(encoded.input_ids)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_decoded_final_answer_is_the_answer_alone(family):
    # What evaluate scores is the decode without special tokens: anything else the model is trained to write
    # around the answer (Qwen3's think block is made of ordinary tokens) would break every JSON metric.
    tok = tokenizer(FAMILIES[family])
    record = Example("r", SHAPES["multi+system"])
    encoded, prompt = encode(tok, record, max_seq_len=4096), prompt_ids(tok, record)
    final = [t for t in encoded.labels[len(prompt):] if t != IGNORE]
    assert json.loads(tok.decode(final, skip_special_tokens=True).strip()) == {"team": "it"}


def test_qwen3_prompts_end_with_the_empty_think_block():
    tok = tokenizer(FAMILIES["qwen3"])
    assert tok.convert_ids_to_tokens(tok.convert_tokens_to_ids(["<think>"])) == ["<think>"]
    assert "<think>" not in tok.all_special_tokens  # as in Qwen3's own tokenizer
    prompt = prompt_ids(tok, Example("r", SHAPES["single"]))
    block = tok("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
    assert prompt[-len(block):] == block and tok.convert_tokens_to_ids("<think>") in block


def test_mistral_keeps_the_system_message_the_final_answer_is_generated_under():
    # Mistral v0.3 renders the system message inside the last user turn, so a render that ends with the answer
    # has no system message at all; the trained text is the inference prompt plus the answer.
    tok = tokenizer(FAMILIES["mistral"])
    text, found = spans(tok, SHAPES["single+system"])
    assert text == '<s>[INST] Answer in JSON.\n\nPrinter is jammed[/INST] {"team": "hw"}</s>'
    assert [text[a:b] for a, b in found] == [' {"team": "hw"}</s>']


def test_qwen3_reasoning_of_a_final_answer_is_quarantined_not_dropped():
    # Rendered without thinking (RENDER_KWARGS), the prompt ends with the empty think block: the reasoning of the
    # final answer has no place in what inference sees, and training on the answer alone would lose it silently.
    tok = tokenizer(FAMILIES["qwen3"])
    messages = [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "<think>\nr1\n</think>\n\nA1"},
                {"role": "user", "content": "b?"}, {"role": "assistant", "content": "<think>\nr2\n</think>\n\nB2"}]
    with pytest.raises(TemplateError, match=r"part of the final answer \(messages\[3\]\)"):
        spans(tok, messages)
    # Reasoning in an earlier answer is dropped by the template itself, as it is at inference.
    text, found = spans(tok, [*messages[:3], {"role": "assistant", "content": "B2"}])
    assert [text[a:b] for a, b in found] == ["A1<|im_end|>\n", "B2<|im_end|>\n"] and "r1" not in text


def test_the_render_date_is_fixed():
    # Llama 3.x stamps today's date into the system header unless date_string is given: a run resumed the next
    # day would otherwise see other tokens for the same records.
    tok = tokenizer(FAMILIES["llama3"])
    text, _ = spans(tok, SHAPES["single"])
    assert "Today Date: 26 Jul 2024" in text


def test_records_a_template_cannot_express_are_quarantined_with_the_reason():
    gemma = tokenizer(FAMILIES["gemma3"])
    records = [Example("ok", SHAPES["single"]),
               Example("two-users", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                     {"role": "assistant", "content": "c"}])]
    encoded, rejected = encode_all(gemma, records, max_seq_len=512)
    assert [e.id for e in encoded] == ["ok"]
    assert [r.id for r in rejected] == ["two-users"] and "roles must alternate" in rejected[0].reason
    # The abridged Mistral template silently skips a system message that is not first: that record would
    # train without its instructions, so it is refused rather than trained on.
    mistral = tokenizer(FAMILIES["mistral"])
    late_system = [*SHAPES["single"], {"role": "system", "content": "Be terse."}, *SHAPES["multi"][2:]]
    with pytest.raises(TemplateError, match=r"leaves out messages\[2\] \(system\)"):
        encode(mistral, Example("late", late_system), max_seq_len=512)


def test_a_template_with_generation_blocks_names_its_own_spans():
    tok = tokenizer(FAMILIES["qwen2.5"])
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    encoded = encode(tok, Example("r", SHAPES["multi+system"]), max_seq_len=4096)
    assert _targets(tok, encoded) == '{"team": "hw"}<|im_end|>{"team": "it"}<|im_end|>'


def test_markers_in_the_data_are_refused():
    tok = tokenizer(FAMILIES["qwen2.5"])
    record = Example("r", [{"role": "user", "content": "x\ue0000\ue000"}, {"role": "assistant", "content": "y"}])
    with pytest.raises(TemplateError, match="private-use"):
        encode(tok, record, max_seq_len=64)


def _metaspace_tokenizer(scheme: str, inst_special: bool):
    """A SentencePiece-style tokenizer (Metaspace pre-tokenizer, as transformers 5 builds LlamaTokenizer) with
    Mistral's template, trained here on a few sentences."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    from tests.llm.ml.families import TEMPLATES

    specials = ["<unk>", "<s>", "</s>"] + (["[INST]", "[/INST]"] if inst_special else [])
    core = Tokenizer(BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=True)
    core.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=True)
    corpus = ["[INST] What is the capital of France?[/INST] Paris is the capital.",
              "[INST] And of Italy?[/INST] Rome.", "hello world [INST] [/INST] the answer is"] * 50
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ?.[]/ \n\u2581")
    core.train_from_iterator(corpus, BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=specials[3:],
                                   chat_template=(TEMPLATES / FAMILIES["mistral"].template).read_text())


@pytest.mark.parametrize("inst_special", [True, False])
@pytest.mark.parametrize("scheme", ["first", "always"])
def test_a_sentencepiece_style_tokenizer_trains_on_the_prompt_inference_sees(scheme, inst_special):
    tok = _metaspace_tokenizer(scheme, inst_special)
    record = Example("r", [{"role": "user", "content": "What is the capital of France?"},
                           {"role": "assistant", "content": "Paris is the capital."},
                           {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."}])
    encoded = encode(tok, record, max_seq_len=4096)
    prompt = prompt_ids(tok, record)
    # Was: the context after the first answer began with "▁[INST]" where the whole prompt has "[", "INST]".
    assert encoded.input_ids[: len(prompt)] == prompt
    assert encoded.labels[len(prompt)] != IGNORE and encoded.labels[len(prompt) - 1] == IGNORE
    assert "Paris is the capital." in _targets(tok, encoded) and _targets(tok, encoded).endswith("Rome.</s>")
