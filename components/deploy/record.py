"""The deploy step's record (the ``deployment`` output) and how a user reaches the endpoint."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# deployed: the new version serves; rolled_back: it failed its smoke test and the previous one keeps serving;
# unchanged: that version already serves; rendered: manifests/repository written for a cluster to apply;
# failed: the candidate failed and there was no previous version to keep serving.
STATUSES = ("deployed", "rolled_back", "unchanged", "rendered", "failed")


@dataclass
class DeploymentRecord:
    target: str
    status: str
    requested_uri: str
    model_uri: str = ""  # the exact version deployed: models:/<name>/<n>
    version: int | None = None
    strategy: str = field(kw_only=True)  # every record names it; component.yaml holds the input's default
    canary_percent: int | None = None
    endpoint: str = ""
    token_file: str | None = None
    curl: str | None = None
    files: list[str] = field(default_factory=list)
    error: str | None = None
    details: dict = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")


def curl_command(
    proxy_url: str, token_file: str, prompt: str = "My invoice shows the wrong amount, urgent!"
) -> str:
    """A copy-paste request to the local proxy's JSON route (it makes the v2 infer call to Triton)."""
    body = json.dumps({"prompt": prompt, "max_new_tokens": 32})
    return (
        f"curl -s -X POST {proxy_url}/v1/generate "
        f'-H "Authorization: Bearer $(cat {shlex.quote(token_file)})" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
