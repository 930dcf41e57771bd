"""R11 of tools.conformance.azureml: the workspace's record of the jobs a later node may reuse.

Run as (a library): record = ReuseRecord(workspace_folder)
                    earlier = record.find(key)                # a finished job with this reuse key, or None
                    record.add(key, finished)                 # after a deterministic node's job succeeded

Azure ML keeps its jobs in the workspace, so the record lives in the workspace's folder (the one holding the
datastores, R8) and outlives every job and pipeline job, as the datastores do. The reuse criteria are those of
https://learn.microsoft.com/azure/machine-learning/how-to-debug-pipeline-reuse-issues ("How does reuse work?",
MicrosoftDocs/azure-ai-docs articles/machine-learning/how-to-debug-pipeline-reuse-issues.md): the component has
`is_deterministic: true`, the pipeline's `force_rerun` is false, and the component's code, its environment
definition, its inputs and parameters, its output settings and its run settings are all the same as the earlier
job's; the child jobs of a pipeline job run with `force_rerun: true` are never reused by later jobs. What the key
holds, field by field, is `AzureMLRuntime.reuse_key` (tools.conformance.azureml); this module only stores it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

RECORD_FILE = "reuse.jsonl"


def digest(key: dict[str, Any]) -> str:
    """The key's fingerprint: equal keys (whatever their order) have equal fingerprints."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class FinishedJob(BaseModel):
    """A node's job as the workspace keeps it: what a reusing node shows as its own (status, outputs, log)."""

    key: str
    node: str
    job: str                       # the job's name (its run id) or, without a workspace endpoint, its folder
    status: str                    # succeeded | skipped: copied to the node that reuses it
    outputs: dict[str, str]        # output name -> path: the reusing node's outputs are these very paths
    output_types: dict[str, str]
    log: str | None = None


class ReuseRecord:
    """The finished deterministic jobs of one workspace, one JSON line each, in `<workspace>/reuse.jsonl`."""

    def __init__(self, workspace: Path):
        self.path = workspace / RECORD_FILE

    def jobs(self) -> list[FinishedJob]:
        if not self.path.is_file():
            return []
        return [FinishedJob.model_validate_json(line) for line in self.path.read_text().splitlines() if line]

    def find(self, key: str) -> FinishedJob | None:
        """The job whose outputs a node with reuse key `key` reuses. A job is recorded only when no earlier one
        had its key (that node would have reused it instead of running), so there is at most one."""
        return next((job for job in self.jobs() if job.key == key), None)

    def add(self, job: FinishedJob) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(job.model_dump_json() + "\n")
