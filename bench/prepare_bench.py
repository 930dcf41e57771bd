"""Throughput and memory of the prepare step on synthetic chat data (near-dup dedup and PII redaction on),
read from JSON Lines and from Parquet.

Run as: python bench/prepare_bench.py                  # 10k and 100k records, JSONL and Parquet
        python bench/prepare_bench.py --million        # ... and 1M (a few minutes)
        python bench/prepare_bench.py --sizes 10000 --types parquet   # one quick size, one file type
        python bench/prepare_bench.py --workers 0 --million --out bench/results/prepare-workers-auto.json  # CLI choice

The input files are written by one child process and each size and file type is then prepared in a fresh
child process, so peak RSS is the prepare run's own, not the data generator's. The run is what the CLI does
(``components.prepare.pipeline.run`` with the component's defaults and the CLI's worker count). Beside it, in
the same child, a plain baseline reads the same file with the same reader and writes every record back as
JSON with no checks: ``vs_plain`` is prepare's time over that, a ratio that the machine's load affects far
less than the absolute figures. Targets: >= 5,000 records/s and 10x the records in <= 11x the time, for
both file types. Wall-clock and CPU-time rates are both recorded (CPU seconds include worker processes): on a
shared machine the wall-clock rate mostly measures the other tenants, so the load average is recorded at the
start and end of each run. Writes bench/results/prepare.json and prints records/s, CPU seconds, peak RSS and
the scaling ratio (time of 10x records / time of 1x; linear is 10).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "prepare.json"

SYSTEM = (
    "You are a support triage assistant. Read the ticket and answer with one JSON object with keys "
    "category, priority and product. Answer with the JSON object only."
)
WORDS = (
    "order account password invoice refund delivery broken screen battery charger login error payment "
    "subscription cancel upgrade shipping address warranty replacement slow crash update install app "
    "website email card declined missing package tracking number support agent manager urgent today "
    "yesterday week month please help thanks again still waiting since monday printer router laptop "
    "phone tablet headphones keyboard mouse monitor cable adapter firmware driver backup restore sync"
).split()
PII = (
    "Reach me at jane.roe{n}@example.org",
    "My card 4111 1111 1111 1111 was charged twice",
    "call me on +1 415-555-{n:04d}",
    "server 10.0.{a}.{b} is down",
    "my key is sk-{tok}",
)


def synth_lines(n: int, seed: int = 7) -> list[str]:
    """``n`` JSONL lines: unique tickets plus ~4% exact duplicates, ~4% near-duplicates, ~5% with PII."""
    rng = random.Random(seed)
    lines: list[str] = []
    pairs: list[tuple[str, str]] = []
    for i in range(n):
        roll = rng.random()
        if lines and roll < 0.04:
            lines.append(lines[rng.randrange(len(lines))])
            continue
        if pairs and roll < 0.08:  # near-duplicate of an earlier record: case, space, punctuation edits
            ticket, answer = pairs[rng.randrange(len(pairs))]
            ticket = ticket.replace(" (ref", "  (Ref").replace(").", ")!")
        else:
            ticket = " ".join(rng.choices(WORDS, k=rng.randint(25, 45))).capitalize() + f" (ref {i})."
            if roll < 0.13:
                ticket += " " + rng.choice(PII).format(
                    n=i % 10000,
                    a=i % 250,
                    b=(i // 250) % 250,
                    tok="".join(rng.choices("abcdefghijk0123456789", k=32)),
                )
            answer = json.dumps(
                {
                    "category": rng.choice(["billing", "technical", "account", "shipping"]),
                    "priority": rng.choice(["low", "medium", "high"]),
                    "product": rng.choice(WORDS),
                }
            )
            pairs.append((ticket, answer))
        rec = {
            "id": f"r{i}",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": ticket},
                {"role": "assistant", "content": answer},
            ],
        }
        lines.append(json.dumps(rec))
    return lines


def write_input(tmp: str, n: int, kind: str) -> Path:
    lines = synth_lines(n)
    if kind == "jsonl":
        raw = Path(tmp) / "raw.jsonl"
        raw.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return raw
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = Path(tmp) / "raw.parquet"
    with pq.ParquetWriter(raw, pa.Table.from_pylist([json.loads(lines[0])]).schema) as writer:
        for start in range(0, n, 50_000):
            writer.write_table(pa.Table.from_pylist([json.loads(x) for x in lines[start : start + 50_000]]))
    return raw


def _plain_copy(raw: Path, out: Path) -> float:
    """Seconds to read every record of ``raw`` with prepare's reader and write it back as a JSON line."""
    from tuneline.llm.data.sources import Dataset

    start = time.perf_counter()
    dataset = Dataset(raw)
    with out.open("wb", buffering=1 << 20) as fh:
        for f in dataset.files:
            for item in dataset.records(f):
                obj = json.loads(item.data) if item.data is not None else item.obj
                fh.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")
    return time.perf_counter() - start


def _cpu_seconds() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def run_one(raw: Path, n: int, workers: int, kind: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from components.prepare.__main__ import _auto_workers
    from components.prepare.pipeline import PrepareConfig, run

    workers = workers or _auto_workers(raw)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PrepareConfig.for_files(raw, Path(tmp), workers=workers)
        load = os.getloadavg()[0]
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        result = run(cfg)
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kids_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        load_end = os.getloadavg()[0]
        plain = _plain_copy(raw, Path(tmp, "plain.jsonl"))
        s = result.stats
        return {
            "records": n,
            "type": kind,
            "input_mib": round(raw.stat().st_size / 2**20, 1),
            "workers": workers,
            "seconds": round(seconds, 3),
            "records_per_second": round(n / seconds, 1),
            "cpu_seconds": round(cpu, 3),
            "records_per_cpu_second": round(n / cpu, 1),
            "plain_copy_seconds": round(plain, 3),
            "vs_plain": round(seconds / plain, 2),
            "load_average_at_start": round(load, 2),
            "load_average_at_end": round(load_end, 2),
            "peak_rss_mib": round(rss, 1),
            "worker_peak_rss_mib": round(kids_rss, 1) if workers > 1 else None,
            "kept": s.kept,
            "quarantined": s.quarantined,
            "deduplicated": s.deduplicated,
            "near_duplicates": s.reasons.get("near_duplicate", 0),
            "pii": sum(result.pii_counts.values()),
        }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="record counts")
    p.add_argument("--million", action="store_true", help="add 1,000,000 records to --sizes")
    p.add_argument(
        "--workers", type=int, default=1,
        help="parse/redact/sign processes (1: main process only, the default, so that sizes compare; 0: as the "
        "CLI picks, which is 1 under 8 MiB of input and one per CPU up to 4 above)"
    )
    p.add_argument("--types", nargs="+", default=["jsonl", "parquet"], choices=["jsonl", "parquet"],
                   help="input file types")
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child mode: prepare this many
    p.add_argument("--make", type=int, default=0, help=argparse.SUPPRESS)  # child mode: write this many
    p.add_argument("--raw", type=Path, help=argparse.SUPPRESS)  # child mode: the input file
    p.add_argument("--type", default="jsonl", help=argparse.SUPPRESS)  # child mode
    p.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    p.add_argument("--merge", type=Path, nargs="+", default=[],
                   help="run nothing: combine the runs of these results files (e.g. one per file type) into --out")
    return p


def _run_size(kind: str, n: int, workers: int) -> dict:
    """Write `n` records as `kind`, prepare them in a fresh process and print the row it measured."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = subprocess.run(
            [sys.executable, __file__, "--make", str(n), "--raw", tmp, "--type", kind],
            check=True, capture_output=True, text=True, cwd=ROOT,
        ).stdout.strip().splitlines()[-1]
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--raw", raw, "--workers", str(workers),
             "--type", kind],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(
        f"{kind:>7} {n:>9,} records  {row['seconds']:>8.2f} s  {row['records_per_second']:>9,.0f} rec/s  "
        f"{row['cpu_seconds']:>8.2f} CPU-s  {row['records_per_cpu_second']:>9,.0f} rec/CPU-s  "
        f"x{row['vs_plain']} plain copy  peak RSS {row['peak_rss_mib']:>7,.0f} MiB  workers {row['workers']}  "
        f"load {row['load_average_at_start']}-{row['load_average_at_end']}  "
        f"(kept {row['kept']}, dedup {row['deduplicated']})",
        flush=True,
    )
    return row


def _scaling(rows: list[dict]) -> list[dict]:
    """How time grew against size between successive runs of one file type."""
    return [
        {
            "type": a["type"],
            "from": a["records"],
            "to": b["records"],
            "time_ratio": round(b["seconds"] / a["seconds"], 2),
            "cpu_time_ratio": round(b["cpu_seconds"] / a["cpu_seconds"], 2),
            "plain_copy_time_ratio": round(b["plain_copy_seconds"] / a["plain_copy_seconds"], 2),
            "size_ratio": round(b["records"] / a["records"], 2),
        }
        for a, b in zip(rows, rows[1:], strict=False)
        if a["type"] == b["type"]
    ]


def main() -> None:
    args = _parser().parse_args()
    if args.make:
        print(write_input(str(args.raw), args.make, args.type))
        return
    if args.one:
        print(json.dumps(run_one(args.raw, args.one, args.workers, args.type)))
        return
    sizes = sorted(set(args.sizes) | ({1_000_000} if args.million else set()))
    rows = []
    for path in args.merge:
        rows += json.loads(path.read_text())["runs"]
    rows.sort(key=lambda r: (r["type"] != "jsonl", r["records"]))
    for kind, n in ((k, n) for k in args.types for n in sizes if not args.merge):
        rows.append(_run_size(kind, n, args.workers))
    scaling = _scaling(rows)
    for s in scaling:
        print(
            f"{s['type']}: {s['from']:,} -> {s['to']:,}: wall time x{s['time_ratio']}, CPU time x{s['cpu_time_ratio']} "
            f"(plain copy x{s['plain_copy_time_ratio']}) "
            f"for records x{s['size_ratio']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "settings": "defaults: near-dup 0.85, num_perm 128, PII redaction on",
                "note": "records_per_cpu_second counts the CPU time of the run and its worker processes; "
                "it is the figure to compare when the machine is shared (see load_average_at_start).",
                "runs": rows,
                "scaling": scaling,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
