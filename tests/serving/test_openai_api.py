"""The OpenAI request/response shapes, without a server (the wire test with the openai client is in
test_local.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneline.serving.openai_api import ApiError, Result, StreamWriter, parse_chat, parse_completion, response


def _chat(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_chat_becomes_one_message_list_row() -> None:
    body = json.dumps(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "printer "}, {"type": "text", "text": "down"}]},
            ],
            "max_completion_tokens": 12,
            "temperature": 0.7,
            "top_p": 0.9,
            "stop": "}",
        }
    ).encode()
    gen = parse_chat(body)
    assert gen.prompt_format == "messages" and gen.max_tokens == 12 and gen.stop == ["}"]
    assert json.loads(gen.texts[0]) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "printer down"},
    ]
    assert (gen.temperature, gen.top_p) == (0.7, 0.9)


def test_omitted_temperature_decodes_greedily() -> None:
    assert parse_chat(_chat()).temperature == 0.0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_chat(n=2), "n"),
        (_chat(tools=[{"type": "function"}]), "tools"),
        (_chat(logprobs=True), "logprobs"),
        (_chat(temperature=3), "temperature"),
        (_chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (_chat(messages=[]), "messages"),
        (_chat(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]), "messages"),
        (_chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages"),
        (b"{not json", None),
    ],
)
def test_unsupported_or_invalid_chat_is_400(body: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        parse_chat(body)
    assert refused.value.status == 400
    error = refused.value.body()["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert param in (error["param"] or "") or param in error["message"]


def test_completions_are_raw_prompts_with_openai_default_length() -> None:
    gen = parse_completion(json.dumps({"model": "m", "prompt": ["a", "b"]}).encode())
    assert gen.texts == ["a", "b"] and gen.prompt_format == "raw" and gen.max_tokens == 16
    with pytest.raises(ApiError, match="echo"):
        parse_completion(json.dumps({"model": "m", "prompt": "a", "echo": True}).encode())


def test_responses_carry_usage_and_finish_reason() -> None:
    result = Result(texts=["ok"], prompt_tokens=[7], completion_tokens=[2], finish_reasons=["stop"])
    body = response(parse_chat(_chat()), result, "m")
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "ok"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_stream_is_server_sent_chunks_ending_with_done() -> None:
    result = Result(texts=["ok"], prompt_tokens=[7], completion_tokens=[2], finish_reasons=["length"])
    gen = parse_chat(_chat(stream=True, stream_options={"include_usage": True}))
    writer = StreamWriter(gen, "m")
    events = [writer.start(0), writer.piece(0, "o"), writer.piece(0, "k"), writer.finish(0, "length")]
    events += writer.end(result).split(b"\n\n")[:-1]
    events = [e if e.endswith(b"\n\n") else e + b"\n\n" for e in events]
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["o", "k"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 9


def test_completion_stream_chunks_carry_text_and_errors_are_events() -> None:
    gen = parse_completion(json.dumps({"model": "m", "prompt": ["a", "b"], "stream": True}).encode())
    writer = StreamWriter(gen, "m")
    assert writer.start(0) == b""  # a completion chunk has no role
    chunk = json.loads(writer.piece(1, "x")[6:])
    assert chunk["object"] == "text_completion" and chunk["choices"][0] == {
        "index": 1, "text": "x", "logprobs": None, "finish_reason": None}
    assert "usage" not in chunk and writer.end(Result([], [], [], [])) == b"data: [DONE]\n\n"
    error = json.loads(StreamWriter.error("upstream stream broke", 502)[6:])
    assert error["error"]["message"] == "upstream stream broke" and error["error"]["type"] == "server_error"


TICKET_SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "data/sample/tickets.schema.json").read_text())


def test_response_format_becomes_the_engines_guide() -> None:
    assert parse_chat(_chat()).guide == ""
    assert parse_chat(_chat(response_format={"type": "text"})).guide == ""
    assert json.loads(parse_chat(_chat(response_format={"type": "json_object"})).guide) == {"json_object": True}
    schema_format = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET_SCHEMA, "strict": True}}
    assert json.loads(parse_chat(_chat(response_format=schema_format)).guide) == {"json": TICKET_SCHEMA}
    assert json.loads(parse_completion(json.dumps({"prompt": "x", "response_format": schema_format}).encode())
                      .guide) == {"json": TICKET_SCHEMA}


@pytest.mark.parametrize(
    ("response_format", "param", "says"),
    [
        ({"type": "xml"}, "response_format.type", "text, json_object or json_schema"),
        ({"type": "json_schema"}, "response_format.json_schema.schema", "must be a JSON schema object"),
        ({"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "objct"}}},
         "response_format.json_schema.schema", "not a valid JSON schema"),
    ],
)
def test_a_response_format_the_engine_cannot_take_is_refused(response_format: dict, param: str, says: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_chat(_chat(response_format=response_format))
    assert err.value.param == param and says in str(err.value)
