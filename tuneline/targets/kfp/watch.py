"""Run a multi-node job's command only while the KFP step that launched it is alive.

Run as (the command of every TrainJob/PyTorchJob pod the launcher submits; the arguments come from it):
    python -m tuneline.targets.kfp.watch --heartbeat /mnt/checkpoints/<run>/<step>/launcher-heartbeat -- torchrun ...

Why: terminating a KFP run does not delete its pods (Argo signals their containers and keeps them:
workflow/controller/pod/queue.go in argoproj/argo-workflows, `terminateContainers`), so the job's ownerReference to
the launcher pod frees nothing; and the launcher's own SIGTERM handler races the container's end, because the
signal reaches KFP's launcher binary in the same process group, which exits at once and takes the container with
it. So the launcher (`tuneline.targets.kfp.launch`) writes a counter to a file on the volume the job's pods share every
BEAT_SECONDS, and this wrapper, in each of the job's pods, stops the command when the counter has not moved for
`--stale` seconds of its own clock (no clock is compared across machines). The job then fails and releases its
nodes; a retry of the step replaces it and resumes from its checkpoints. The wrapper that found the launcher gone
leaves GONE_FILE beside the heartbeat, and a pod that starts while it is there exits at once: Trainer's
torch-distributed runtime sets no backoffLimit, so the Job's default of 6 would restart each pod six more times,
each waiting its own `--stale` seconds with the GPUs held (about 70 minutes instead of 10). A new launcher removes
the file when it starts beating.

SIGTERM and SIGINT are passed on to the command's process group, so torchrun and its workers can checkpoint. Only
the standard library is used: this runs before the step's own imports.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

WATCH_MODULE = "tuneline.targets.kfp.watch"
HEARTBEAT_FILE = "launcher-heartbeat"
GONE_FILE = "launcher-gone"
BEAT_SECONDS = 30
STALE_SECONDS = 600  # twenty missed beats: a shared volume's hiccup or a retried launcher's backoff stays under it
GRACE_SECONDS = 60   # between SIGTERM and SIGKILL when the launcher is gone: time for a last checkpoint
STOPPED = 75         # the exit code when the launcher is gone (EX_TEMPFAIL)


def read_beat(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def watch(command: list[str], heartbeat: Path, stale: float, poll: float = 5, grace: float = GRACE_SECONDS) -> int:
    gone = heartbeat.with_name(GONE_FILE)
    if gone.exists():
        print(f"watch: {gone} says the KFP step that launched this job is gone; not starting", file=sys.stderr,
              flush=True)
        return STOPPED
    child = subprocess.Popen(command, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        os.killpg(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        last, moved = read_beat(heartbeat), time.monotonic()
        while child.poll() is None:
            time.sleep(poll)
            beat = read_beat(heartbeat)
            if beat != last:
                last, moved = beat, time.monotonic()
            elif time.monotonic() - moved > stale:
                print(f"watch: {heartbeat} has not changed for {stale:.0f} s: the KFP step that launched this job "
                      f"is gone; stopping", file=sys.stderr, flush=True)
                try:
                    gone.write_text(f"{beat}")
                except OSError:
                    pass  # the volume is what failed: the restarted pods then wait --stale seconds again
                os.killpg(child.pid, signal.SIGTERM)
                try:
                    child.wait(grace)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                return STOPPED
        code = child.returncode
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise SystemExit("watch: the job's command follows `--`")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog=WATCH_MODULE, description="Run a command while its launcher beats.")
    parser.add_argument("--heartbeat", required=True, type=Path, help="the file the launcher rewrites")
    parser.add_argument("--stale", type=float, default=STALE_SECONDS, help="seconds without a change that stop it")
    parser.add_argument("--poll", type=float, default=5, help="seconds between reads of the heartbeat")
    args = parser.parse_args(argv[:split])
    return watch(argv[split + 1:], args.heartbeat, args.stale, args.poll)


if __name__ == "__main__":
    sys.exit(main())
