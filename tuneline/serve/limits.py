"""The proxy's limits under load, shared by the proxy and by `local`, which starts it with them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProxyLimits:
    # Two full Triton batches (2 x max_batch_size 32): one running, the next already queued in Triton.
    max_inflight: int = 64
    max_queue: int = 512  # waiting here beyond max_inflight; past it: 429
    request_timeout_s: float = 600.0  # deadline of a request that names none, queue wait included
    keep_alive_s: int = 75  # idle client connections kept open (longer than common client pools' 60 s)
    backlog: int = 2048  # pending TCP connections the kernel queues before accept

    def __post_init__(self) -> None:
        if self.max_inflight < 1 or self.max_queue < 0 or self.request_timeout_s <= 0 or self.backlog < 1:
            raise ValueError(f"invalid proxy limits: {self}")
