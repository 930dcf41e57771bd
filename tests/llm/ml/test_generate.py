"""Greedy generation stops where the model's turn ends, not only at the tokenizer's eos."""

import torch

from tests.llm.ml.families import FAMILIES, build
from tuneline.llm.ml.chat import prompt_ids
from tuneline.llm.ml.data import Example
from tuneline.llm.ml.generate import generate, stop_ids
from tuneline.llm.ml.models import load_causal_lm, load_tokenizer

RECORD = Example("r", [{"role": "user", "content": "Printer is jammed"}, {"role": "assistant", "content": "hw"}])


def _turn_then_chatter(model, end_of_turn: int, chatter: int) -> None:
    """Weights under which greedy decoding writes <end_of_turn> after any token but <end_of_turn>, and ``chatter``
    after it: every layer's output projection is zero, so the last hidden state is the (normalised) embedding of
    the last input token, and the output head maps the two embedding directions to the two tokens."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed.zero_()
        embed[:, 1] = 1.0
        embed[end_of_turn] = 0.0
        embed[end_of_turn, 0] = 1.0
        head = torch.nn.Linear(embed.shape[1], embed.shape[0], bias=False)
        head.weight.zero_()
        head.weight[end_of_turn, 1] = 1.0
        head.weight[chatter, 0] = 1.0
        model.lm_head = head


def test_gemma_stops_at_end_of_turn(tmp_path):
    folder = build(FAMILIES["gemma3"], tmp_path / "gemma3")
    tokenizer = load_tokenizer(folder, padding_side="left")
    model = load_causal_lm(folder).eval()
    end_of_turn, chatter = tokenizer.convert_tokens_to_ids(["<end_of_turn>", "x"])
    # As Gemma ships: the tokenizer's eos is <eos>; the generation config also stops on <end_of_turn>.
    assert tokenizer.eos_token == "<eos>"
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, end_of_turn]
    _turn_then_chatter(model, end_of_turn, chatter)

    prompt = torch.tensor([prompt_ids(tokenizer, RECORD)])
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=8,
                         eos_token_id=stop_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id)
    assert out[0, prompt.shape[1]:].tolist() == [end_of_turn]  # exactly one new token: the end of the turn
    # Was: generation ran on to max_new_tokens and the answer was "xxxxxxx".
    assert generate(model, tokenizer, [RECORD, RECORD], max_new_tokens=8, batch_size=2) == ["", ""]
