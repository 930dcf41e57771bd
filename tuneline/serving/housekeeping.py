"""Adapter housekeeping: when a rollout settles, the adapters no route names leave the model repository.

A server serving LoRA adapters on one base gains an adapter folder with every version that joins it
(`repository.add_adapter`). When a rollout settles (a blue/green switch has finished, `rollout`; the proxy's
canary has promoted or rolled back its candidate, `local.reconcile`), each routed server's adapters are removed
from its repository, except:

- those a route names (`Routes.backends`): the current version, and a candidate while a canary is still judged;
- the previous champion (`Routes.previous`), the version a rollback goes back to: a promotion replaces it (the
  version it demoted takes its place), a rollback keeps it;
- the repository's default adapter (serving.json `adapter`): the engines load it when the server starts, and the
  proxy's supervisor restarts a dead server on the same repository.

A server thus holds at most four adapters: the default, the previous champion, the current one and a candidate.
What was removed is printed (to the proxy's log, for a canary decision) and named in the rollout's result
(`RolloutResult.removed_adapters`) or in the canary decision's record (canary.json, shown by `/v1/stats`).

A request in flight that names a removed adapter:

- requests routed just before the routes changed reach the engine within `drain_s`, which the removal waits first;
- once a row is in the engine, its adapter's folder is no longer read. vLLM 0.32.0 reads an adapter's weights once,
  into host memory, when it is added (vllm/lora/worker_manager.py `WorkerLoRAManager._load_adapter`, through
  `LoRAModel.from_local_checkpoint` in vllm/lora/lora_model.py), and keeps them in an LRU cache of `max_cpu_loras`
  adapters (`LRUCacheWorkerLoRAManager`); every engine step re-adds the adapters of the rows it runs
  (vllm/v1/worker/gpu_model_runner.py, "Hot-Swap lora model", which the CPU runner inherits), which for a cached
  one only moves it up the LRU, so a running row's adapter is never the one evicted. PEFT, the plain-generate
  engine, holds an adapter in memory once loaded, and lets go of a removed one only at its next batch that does
  not name it (triton_model.py `_unload_removed_adapters`). A file being read while it is unlinked stays readable;
- a row that arrives later is refused by both engines, which check the adapter's folder for every row
  (triton_model.py `_adapter`) and name the adapters served: vLLM never serves a removed adapter again. That check
  is what makes removal safe at all: an adapter vLLM has evicted is read again from its folder inside a model step
  (`_apply_adapters`), where a missing folder (LoRAAdapterNotFoundError) is fatal to the engine core
  (vllm/v1/engine/core.py, "EngineCore encountered a fatal error"): vllm_model.py's watchdog then stops the
  server, and every version it serves is down until it is restarted.

The engine's `remove_lora` (vllm/v1/engine/async_llm.py) is not called through the model: it drops the adapter from
the worker's cache at once, so a row still running on it would have it read again from its folder at its next step,
the fatal path above. Nothing needs it: the host cache is bounded by `max_cpu_loras` (vllm_model.py `MAX_LORAS`), so
a removed adapter's matrices are evicted as the adapters still served are used.

Each adapter is renamed out of `adapters/` in one step before its files are deleted (`repository.remove_adapters`),
so an engine checking for it sees all of its folder or none.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from tuneline.serving.repository import default_adapter, remove_adapters, served_adapters
from tuneline.serving.routing import Routes


class RoutedServer(Protocol):
    """What housekeeping reads of a running server (tuneline.serving.local.ServerInfo, which imports this module)."""

    @property
    def slot(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def repo_dir(self) -> str: ...
    @property
    def model_name(self) -> str: ...


def unrouted_adapters(routes: Routes, slot: str, served: Iterable[str]) -> list[str]:
    """Of the adapters `served` by the server in `slot`, those neither a route nor the rollback target names."""
    named = [*routes.backends, *([routes.previous] if routes.previous else [])]
    kept = {b.adapter for b in named if b.slot == slot}
    return [name for name in served if name not in kept]


def remove_unrouted_adapters(routes: Routes | None, servers: Iterable[RoutedServer], *,
                             drain_s: float = 1.0) -> list[str]:
    """Remove, from each routed server's repository, the adapters the module docstring's policy does not keep,
    after waiting `drain_s` for requests already routed to them; returns them as `<slot>/<adapter>`."""
    if routes is None:
        return []
    doomed: list[tuple[str, Path, list[str]]] = []
    for server in servers:
        if not any(b.slot == server.slot and b.url == server.url for b in routes.backends):
            continue  # a server no route names is stopped whole (local.reconcile), not tidied
        root = Path(server.repo_dir) / server.model_name
        names = [n for n in unrouted_adapters(routes, server.slot, served_adapters(root)) if n != default_adapter(root)]
        if names:
            doomed.append((server.slot, root, names))
    if not doomed:
        return []
    time.sleep(drain_s)
    removed = [f"{slot}/{name}" for slot, root, names in doomed for name in remove_adapters(root, names)]
    if removed:
        print(f"housekeeping: removed adapters no route names: {', '.join(removed)}", file=sys.stderr, flush=True)
    return removed
