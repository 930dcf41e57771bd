"""Create a KFP step's output locations the way `tuneline run` and Azure ML have them, then run the step.

Run as (every compiled KFP step does this; the arguments come from the compiler):
    python -m tuneline.step.outdirs --folder /minio/.../model --file /tmp/outputs/passed/data -- python -m ...

Why: a component's contract is that a folder output (uri_folder, model) is an existing, empty folder and a file
output's folder exists when its command starts: the local runner creates them, and Azure ML mounts outputs that
way (tools.conformance.azureml, R5). KFP's launcher only creates the *parent* of each output path
(backend/src/v2/component/launcher_v2.go, `prepareOutputFolders`), so a component writing `model/config.json`
would fail on KFP alone; kfp.local creates neither (tools.conformance.kfp, K2). Only the standard library is
used: this runs before the step's own imports, then replaces itself with the step's command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

OUTDIRS_MODULE = "tuneline.step.outdirs"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise SystemExit("outdirs: the step's command follows `--`")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog=OUTDIRS_MODULE, description="Create output folders, then run the step.")
    parser.add_argument("--folder", action="append", default=[], help="a folder output to create")
    parser.add_argument("--file", action="append", default=[], help="a file output whose folder to create")
    args = parser.parse_args(argv[:split])
    for folder in args.folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
    for file in args.file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
    command = argv[split + 1:]
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
