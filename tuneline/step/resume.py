"""Give a cluster step's `resume: true` outputs a checkpoint store that outlives the pod or job, then run the step.

Run as (a compiled KFP or Azure ML step does this; the arguments come from the compiler):
    python -m tuneline.step.resume --component components/train --root /mnt/checkpoints \
        --store checkpoints=/tmp/out/checkpoints --artifact train=/tmp/in/train --value max_steps=24 -- python -m ...

A KFP output artifact path is per-pod scratch and an Azure ML job's default output path is per job, so checkpoints
written there are gone when a preempted pod is retried or the pipeline is re-run. This wrapper computes a key that
depends only on what determines the step's result, and hands the step `<root>/<key>/<output>` in place of the
output path:

    key = tuneline.step.cache.step_cache_key(component folder, component spec, inputs)

the same function the local runner keys its cache (and its stores, tuneline.targets.local.resume) with: the component's
code and spec and the SDK modules it imports, as they are in the image; every input value, parsed by its declared
type; and the sha256 of the content of every input artifact, as the platform staged it in the container. KFP output
URIs, run ids and pod names differ between a retry and a re-run, so none of them enters the key: a retried pod and
a re-run with the same inputs compute the same key and find the same store.

Where the store lives: on KFP under `--root`, the mounted checkpoint PVC (`$TUNELINE_CHECKPOINT_ROOT`, set by the
compiler with the mount), at `<root>/<key>/<output>`; a successful step's store is copied into the output path for
the launcher to upload, then removed from the volume. On Azure ML (`--in-output`) inside the output itself, which
is rw_mount-ed at a datastore path that does not change between jobs, at `<output>/<key>`; it stays there. A failed
or killed step leaves it for the next attempt. SIGTERM and SIGINT are passed on to the step, so it can checkpoint
before it exits where the platform waits for it (locally, Azure ML); on KFP the launcher that runs this wrapper
exits on the same signal and the container ends with it, so there the last periodic checkpoint is what a retry
finds (docs/kubeflow-versions.md, "Eviction and termination"). The wrapper runs the step as its child rather than
exec-ing it, to copy the store afterwards.

On the volume, two attempts with the same key (a retry whose predecessor is still stopping, or two runs started
with the same inputs) would write one store at once: each holds an exclusive POSIX lock on `<root>/<key>.lock`
while it runs, and the second waits for the first. A POSIX (fcntl) lock is what NFS and SMB mounts carry to the
server (an Azure Files share mounted with `nobrl` keeps it on the node: then only pods on one node exclude each
other). What a failed run leaves on the volume, a store nobody retried or a multi-node job's stage folder
(tuneline.targets.kfp.launch), is removed by the next wrapper once nothing has written to it for
`$TUNELINE_CHECKPOINT_MAX_AGE_DAYS` days (14 by default; 0 keeps everything) and no attempt holds its lock.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

RESUME_MODULE = "tuneline.step.resume"
ROOT_ENV = "TUNELINE_CHECKPOINT_ROOT"
MAX_AGE_ENV = "TUNELINE_CHECKPOINT_MAX_AGE_DAYS"
DEFAULT_MAX_AGE_DAYS = 14.0
_KEY = re.compile(r"^[0-9a-f]{64}$")  # step_cache_key's sha256
_HEARTBEAT = "launcher-heartbeat"  # tuneline.targets.kfp.watch.HEARTBEAT_FILE: a multi-node stage folder's marker


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"resume: {flag} expects NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def store_key(component: Path, values: dict[str, str], artifacts: dict[str, str]) -> str:
    """The step's key from its inputs as the container sees them (see the module docstring)."""
    from ..spec import load_component
    from ..spec.models import parse_cli_value
    from .cache import step_cache_key
    from .digest import path_sha256

    spec = load_component(component).spec
    inputs: dict[str, Any] = {}
    for name, text in values.items():
        declared = spec.inputs.get(name)
        if declared is None:
            raise SystemExit(f"resume: --value {name}: not an input of {component}/component.yaml")
        try:
            inputs[name] = parse_cli_value(declared.type, text)
        except ValueError as exc:
            raise SystemExit(f"resume: --value {name}: {exc}") from None
    for name, path in artifacts.items():
        if name not in spec.inputs:
            raise SystemExit(f"resume: --artifact {name}: not an input of {component}/component.yaml")
        if not Path(path).exists():
            raise SystemExit(f"resume: --artifact {name}: {path} does not exist")
        inputs[name] = {"sha256": path_sha256(Path(path))}
    return step_cache_key(component, spec.model_dump(mode="json"), inputs)


def rewrite(command: list[str], replacements: dict[str, str]) -> list[str]:
    """Each output path in the command, alone or inside a word (`--out=PATH`, `PATH/sub`), replaced by its store;
    a longer path that merely starts with the same letters (`PATH2`) is left alone."""
    patterns = [(re.compile(re.escape(old) + r"(?=/|$|\s)"), new)
                for old, new in sorted(replacements.items(), key=lambda kv: -len(kv[0]))]
    out = []
    for word in command:
        for pattern, new in patterns:
            word = pattern.sub(lambda _m, new=new: new, word)
        out.append(word)
    return out


@contextlib.contextmanager
def store_lock(root: Path, key: str, blocking: bool = True) -> Iterator[bool]:
    """Hold `<root>/<key>.lock` exclusively; yields False at once when `blocking` is off and another holds it."""
    path = root / f"{key}.lock"
    with open(path, "a") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if not blocking:
                yield False
                return
            print(f"resume: another attempt with the same inputs holds {path}; waiting for it to end", flush=True)
            fcntl.lockf(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


def _newest_write(path: Path) -> float:
    newest = path.lstat().st_mtime
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):  # removed meanwhile
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


def sweep(root: Path, keep: str, max_age_days: float, now: float | None = None) -> list[Path]:
    """Remove from `root` the stores (`<key>/`) and multi-node stage folders (`<run>/<step>/` with a launcher
    heartbeat) nothing has written to for `max_age_days`, except `keep`'s and any whose lock is held; returns
    what was removed. Anything else on the volume is left alone."""
    if max_age_days <= 0 or not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - max_age_days * 86400
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and _KEY.match(entry.name) and entry.name != keep:
            with store_lock(root, entry.name, blocking=False) as free:
                if free and _newest_write(entry) < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            if entry in removed:
                (root / f"{entry.name}.lock").unlink(missing_ok=True)
        elif entry.is_dir() and not entry.is_symlink() and not _KEY.match(entry.name):
            stale = [p for p in sorted(entry.iterdir()) if (p / _HEARTBEAT).is_file() and _newest_write(p) < cutoff]
            for stage in stale:
                shutil.rmtree(stage, ignore_errors=True)
                removed.append(stage)
            with contextlib.suppress(OSError):
                if stale and not any(entry.iterdir()):
                    entry.rmdir()
        elif entry.suffix == ".lock" and _KEY.match(entry.stem) and entry.exists() and \
                not (root / entry.stem).exists():
            # what a finished store leaves: removed only when free, so a waiting attempt keeps its lock's file
            with store_lock(root, entry.stem, blocking=False) as free, contextlib.suppress(OSError):
                if free and entry.stat().st_mtime < cutoff:
                    entry.unlink()
    for path in removed:
        print(f"resume: removed {path}: nothing written to it for {max_age_days:g} days", flush=True)
    return removed


def _max_age_days() -> float:
    text = os.environ.get(MAX_AGE_ENV, "")
    try:
        return float(text) if text else DEFAULT_MAX_AGE_DAYS
    except ValueError:
        raise SystemExit(f"resume: ${MAX_AGE_ENV}={text!r} is not a number of days") from None


def run(command: list[str]) -> int:
    """Run the step as a child, passing SIGTERM/SIGINT on; the exit status as a shell reports it."""
    child = subprocess.Popen(command)

    def forward(signum: int, _frame: Any) -> None:
        print(f"resume: signal {signum} received, passed on to the step", flush=True)
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("resume: the step's command follows `--`")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog=RESUME_MODULE, description="Run a step with persistent checkpoint stores.")
    parser.add_argument("--component", required=True, type=Path, help="the component folder, relative to the code root")
    parser.add_argument("--root", default=os.environ.get(ROOT_ENV),
                        help=f"where stores live (default ${ROOT_ENV})")
    parser.add_argument("--in-output", action="store_true",
                        help="keep each store inside its own output, at PATH/<key> (an output mounted read-write "
                             "at a stable path, as on Azure ML); --root is then not needed")
    parser.add_argument("--store", action="append", default=[], metavar="OUTPUT=PATH",
                        help="a resume: true output and the path the platform gave it")
    parser.add_argument("--value", action="append", default=[], metavar="NAME=VALUE", help="an input value")
    parser.add_argument("--artifact", action="append", default=[], metavar="NAME=PATH", help="an input artifact")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise SystemExit("resume: no command after `--`")
    if not args.root and not args.in_output:
        raise SystemExit(f"resume: no --root and ${ROOT_ENV} is not set: the checkpoint volume is not mounted")
    outputs = _pairs(args.store, "--store")
    key = store_key(args.component, _pairs(args.value, "--value"), _pairs(args.artifact, "--artifact"))
    if args.in_output:
        stores = {name: Path(path) / key for name, path in outputs.items()}
        _make_stores(stores)
        return _run_with_stores(command, outputs, stores, key, copy_back=False)
    root = Path(args.root)
    stores = {name: root / key / name for name in outputs}
    _make_stores(stores)
    sweep(root, key, _max_age_days())
    with store_lock(root, key):
        _make_stores(stores)  # again: an attempt that held the lock before may have finished and removed them
        code = _run_with_stores(command, outputs, stores, key, copy_back=True)
        if code != 0:
            return code
        # Under the lock, and only if still empty: an attempt waiting for the lock made its stores in this folder
        # before it started to wait, and a check-then-rmdir outside the lock failed this finished step with
        # "Directory not empty".
        with contextlib.suppress(OSError):
            (root / key).rmdir()
    return 0


def _make_stores(stores: dict[str, Path]) -> None:
    for store in stores.values():
        try:
            store.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(f"resume: cannot create the checkpoint store {store} ({exc.strerror}): is the "
                             f"checkpoint volume mounted there and writable for this user?") from None


def _run_with_stores(command: list[str], outputs: dict[str, str], stores: dict[str, Path], key: str,
                     copy_back: bool) -> int:
    """Run the step with each output's path replaced by its store; with `copy_back` (a store on the volume, not
    inside its output) a successful step's store is copied into the output and removed."""
    for name, store in stores.items():
        found = sorted(p.name for p in store.iterdir())
        print(f"resume: {name} -> {store} (key {key[:12]}; "
              f"{'from an earlier attempt: ' + ', '.join(found) if found else 'empty'})", flush=True)
    code = run(rewrite(command, {outputs[name]: str(store) for name, store in stores.items()}))
    if code != 0 or not copy_back:
        return code  # a store inside its output (Azure ML) stays where the platform keeps it
    for name, store in stores.items():
        shutil.copytree(store, outputs[name], symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
