"""Every limit of the local endpoint in one place: shared by the proxy, by `local`, which starts it with them,
and by docs/serving.md, which lists them with these values; and the requests one replica of a cluster deployment
takes at once (ENGINE_CONCURRENCY), which the platform holds in front of the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Requests one server replica works on at once, by the kind of instance it runs on; past it the platform answers
# (Azure ML 429, KServe's queue-proxy queues 10x this many and then answers 503) instead of the request waiting
# out its timeout inside Triton. On a GPU the vLLM engine batches every live request (continuous batching): 32 is
# the concurrency the serving benchmark holds without errors. On CPU the plain-generate fallback runs one request
# at a time: 2, so the rest get an early answer.
ENGINE_CONCURRENCY: dict[Literal["cpu", "gpu"], int] = {"gpu": 32, "cpu": 2}


@dataclass(frozen=True)
class ProxyLimits:
    # Two full Triton batches (2 x max_batch_size 32): one running, the next already queued in Triton.
    max_inflight: int = 64
    max_queue: int = 512  # waiting here beyond max_inflight; past it: 429
    request_timeout_s: float = 600.0  # deadline of a request that names none, queue wait included
    keep_alive_s: int = 75  # idle client connections kept open (longer than common client pools' 60 s)
    backlog: int = 2048  # pending TCP connections the kernel queues before accept
    # A request body is counted while it is read, chunked or not: past this, 413 and the connection closes.
    # 32 prompts of a full 8,192-token context are ~1.5 MiB of JSON; 4 MiB read at once stays a small part
    # of the proxy's memory.
    max_body_bytes: int = 4 * 1024 * 1024
    max_prompts: int = 32  # prompts in one request (one Triton batch); more: 400
    # One streamed prompt holds one admission slot (its own upstream stream) until it ends.
    max_stream_prompts: int = 4
    header_timeout_s: float = 10.0  # from connection (or the previous response) to a complete request head
    body_timeout_s: float = 30.0  # from the request head to the body's last byte
    max_header_bytes: int = 16 * 1024  # request line + headers (h11's own default, stated here)
    # Past this many open connections (or requests being handled) new requests get 503 at once.
    max_connections: int = 1024

    def __post_init__(self) -> None:
        if (self.max_inflight < 1 or self.max_queue < 0 or self.request_timeout_s <= 0 or self.backlog < 1
                or self.max_body_bytes < 1024 or self.max_prompts < 1 or self.max_stream_prompts < 1
                or self.header_timeout_s <= 0 or self.body_timeout_s <= 0 or self.max_connections < 1):
            raise ValueError(f"invalid proxy limits: {self}")


def check_prompts(limits: ProxyLimits, n: int, stream: bool, param: str) -> None:
    """Bounded work per request: at most `max_prompts` rows, and a streamed request at most as many streams
    as it may hold admission slots (one each). Raises ApiError (400)."""
    from tuneline.serving.openai_api import ApiError

    limit = min(limits.max_stream_prompts, limits.max_inflight) if stream else limits.max_prompts
    if n > limit:
        kind = "a streamed request" if stream else "a request"
        raise ApiError(f"{n} prompts in one request; {kind} takes at most {limit} here", param=param)
