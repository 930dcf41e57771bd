from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from tuneline.serving import process


def test_detached_process_is_tracked_and_stopped(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    ref = process.start_detached(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"], log_path=log
    )
    assert process.is_alive(ref)
    # Same pid, other start time: a recycled pid is not ours.
    assert not process.is_alive(process.ProcessRef(ref.pid, ref.start_ticks + 1))
    deadline = time.monotonic() + 10
    while "up" not in process.log_tail(log) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "up" in process.log_tail(log)
    assert process.stop(ref, timeout=5)
    assert not process.is_alive(ref)
    assert not process.stop(ref)  # stopping twice is a no-op


def test_port_helpers() -> None:
    port = process.free_port()
    assert process.port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not process.port_is_free(port)
