"""Install each CPU image's generated requirements into a throwaway venv and run its components' smoke commands.

This proves, without a container engine, that requirements.txt is complete for the code the image runs:
`import tuneline` plus `python -m components.<name> --help` for every component images.yaml lists, run from
the repository root exactly as the image's WORKDIR runs them.

Run as: .venv/bin/python environments/env_check.py [IMAGE ...]   (default: every cpu_buildable image)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import ENV_DIR, NO_DEPS_FILE, ROOT, ImageSpec, load_images  # noqa: E402  (a script beside this one)


@dataclass
class Outcome:
    image: str
    ok: bool
    seconds: float
    lines: list[str]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)


def check_image(spec: ImageSpec, workdir: Path) -> Outcome:
    start = time.perf_counter()
    lines: list[str] = []
    target = workdir / spec.name
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    py = str(target / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env |= {"PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = _run([py, "-m", "pip", "install", "--quiet", "-r", str(ENV_DIR / spec.name / "requirements.txt")], env)
    if install.returncode != 0:
        return Outcome(spec.name, False, time.perf_counter() - start,
                       [f"pip install failed:\n{install.stderr[-3000:]}"])
    lines.append(f"installed {spec.name}/requirements.txt")
    smoke = [("import tuneline", [py, "-c", "import tuneline"])]
    if spec.no_deps:  # as the Dockerfile does it
        nodeps = _run([py, "-m", "pip", "install", "--quiet", "--no-deps", "-r",
                       str(ENV_DIR / spec.name / NO_DEPS_FILE)], env)
        if nodeps.returncode != 0:
            return Outcome(spec.name, False, time.perf_counter() - start,
                           [f"pip install --no-deps failed:\n{nodeps.stderr[-3000:]}"])
        lines.append(f"installed {spec.name}/{NO_DEPS_FILE} with --no-deps")
        # The default base model's source resolves: the train/evaluate/register/deploy default.
        smoke.append(("default base model source", [py, "-c", "from tuneline.llm.ml.models import CATALOG, "
                      "DEFAULT_BASE_MODEL as d; import importlib.metadata as m; "
                      "[m.distribution(n) for n in CATALOG[d].no_deps]"]))
    for component in spec.components:
        if not (ROOT / "components" / component).is_dir():
            lines.append(f"SKIP components/{component}: not in this checkout")
            continue
        smoke.append((f"python -m components.{component} --help", [py, "-m", f"components.{component}", "--help"]))
    ok = True
    for label, cmd in smoke:
        res = _run(cmd, env)
        ok &= res.returncode == 0
        lines.append(f"{'ok  ' if res.returncode == 0 else 'FAIL'} {label}"
                     + ("" if res.returncode == 0 else f"\n{(res.stderr or res.stdout)[-2000:]}"))
    return Outcome(spec.name, ok, time.perf_counter() - start, lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Smoke-test each CPU image's requirements in a throwaway venv.")
    ap.add_argument("images", nargs="*", help="image names (default: the cpu_buildable ones in images.yaml)")
    ap.add_argument("--keep", action="store_true", help="keep the venvs (printed) instead of deleting them")
    args = ap.parse_args(argv)
    specs = {s.name: s for s in load_images()}
    names = args.images or [s.name for s in specs.values() if s.cpu_buildable]
    unknown = [n for n in names if n not in specs]
    if unknown:
        print(f"error: unknown image(s) {unknown}; known: {sorted(specs)}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="tuneline-envcheck-"))
    try:
        outcomes = [check_image(specs[n], tmp) for n in names]
    finally:
        if args.keep:
            print(f"venvs kept under {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for o in outcomes:
        print(f"== {o.image}: {'ok' if o.ok else 'FAILED'} ({o.seconds:.0f} s)")
        for line in o.lines:
            print(f"   {line}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
