"""Write the content digest of an imported artifact, so that KFP's cache sees the data and not only its URI.

Run as (a compiled KFP task does this, right after each importer):
    python -m tuneline.step.fingerprint /gcs/bucket/tickets.jsonl /tmp/outputs/sha256

Why: the KFP backend's cache key holds the *names* of a task's input artifacts, its parameter values, its output
specs and its container spec, not their content (backend/src/v2/cacheutils/cache.go, `GenerateCacheKey`), and an
importer with `reimport=False` hands back the artifact already registered under the same URI
(backend/src/v2/component/importer_launcher.go, `findOrNewArtifactToImport`). A scheduled retrain on a file
updated in place would therefore be served entirely from cache. This task runs on every run (its own cache is
off) and its digest is a parameter of every step that reads the artifact, so those steps' cache keys change
exactly when the bytes do; with unchanged data they still hit the cache.

The digest is `tuneline.step.digest.path_sha256`, the same one the local runner keys its cache on. It is
written as the bare hex string, since the launcher reads a STRING output parameter verbatim.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .digest import path_sha256
from .outputs import write_value

FINGERPRINT_MODULE = "tuneline.step.fingerprint"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit(f"usage: python -m {FINGERPRINT_MODULE} ARTIFACT_PATH OUTPUT_FILE")
    source, out = Path(args[0]), Path(args[1])
    if not source.exists():
        raise SystemExit(f"fingerprint: {source} does not exist")
    digest = path_sha256(source)
    write_value(out, digest)  # creates the parent folder, which kfp.local does not (the launcher does)
    print(f"fingerprint: {source} sha256 {digest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
