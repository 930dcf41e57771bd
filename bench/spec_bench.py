"""How long validation takes, on the real pipelines and on hostile files that must be refused quickly.

Run as: .venv/bin/python bench/spec_bench.py [--repeat 5]

Prints one line per case (best of N wall time, peak RSS growth) and writes bench/results/spec.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from tuneline.spec import SpecError, load_pipeline
from tuneline.spec.yamlsafe import MAX_BYTES, load_yaml, load_yaml_text

ROOT = Path(__file__).resolve().parents[1]


def alias_bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    return "\n".join(lines)


def timed(case) -> float:
    started = time.perf_counter()
    try:
        case()
    except SpecError:
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; the best is reported")
    parser.add_argument("--out", default=str(ROOT / "bench/results/spec.json"), help="where to write JSON results")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp())
    big = scratch / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(MAX_BYTES + 1)
    cases = {
        "alias bomb (10^10 nodes expanded)": lambda: load_yaml_text(alias_bomb(), "bomb.yaml"),
        "5,000-deep flow nesting": lambda: load_yaml_text("a: " + "[" * 5000 + "]" * 5000, "deep.yaml"),
        "file over 10 MB": lambda: load_yaml(big),
        "1 MB of valid YAML (55k items)": lambda: load_yaml_text("items:\n" + "  - {a: 1, b: two}\n" * 55_000,
                                                                 "large.yaml"),
    }
    for pipeline in sorted((ROOT / "pipelines").glob("*.yaml")):
        cases[f"validate {pipeline.relative_to(ROOT)}"] = lambda p=pipeline: load_pipeline(p)
    results = {}
    for name, case in cases.items():
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        best = min(timed(case) for _ in range(args.repeat))
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        results[name] = {"seconds": round(best, 4), "peak_rss_growth_mb": round(grown, 1)}
        print(f"{name:<45} {best * 1000:9.1f} ms   peak RSS +{grown:.0f} MB")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
