"""Evaluate the base and the tuned model (and the registered champion, when given) on the test split.

Run as: python -m components.evaluate --test DIR --model DIR --base-model smollm2-135m-instruct
        [--schema FILE] [--champion-uri URI] --gates "tuned.exact_match >= 0.8"
        --passed-out FILE --metrics-out FILE --report-out FILE

Metrics per model: perplexity on the reference answers, exact match, token F1, ROUGE-L, BLEU, chrF and, for
JSON answers, JSON validity, schema validity and per-field accuracy. With a champion, the tuned model's win
rate against it (``tuneline.llm.ml.winrate``): each example judged by the gate metric on that example, or by an
LLM judge (``--judge URL --judge-model NAME``, ``tuneline.llm.ml.judge``), with a 95% interval, as
``win_rate.<field>`` in the gates. The gate expression is checked against the metric names before any model is
loaded; ``passed`` is written as JSON text for ``when:`` conditions.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tuneline.settings import disable_mlflow_telemetry
from tuneline.step.args import parse_component_args
from tuneline.step.outputs import write_value

if TYPE_CHECKING:
    from argparse import Namespace

    from tuneline.llm.ml.winrate import WinRate
    from tuneline.spec.gates import Gate, GateResult


def resolve_champion(uri: str) -> Path:
    """A local folder, or an MLflow artifact URI downloaded to a temporary folder."""
    path = Path(uri)
    if uri.startswith("models:/"):
        # A registered version: fetch_model reads it wherever it was registered (MLflow's artifact store, or an
        # Azure ML workspace's datastore) and follows the workspace's alias tags where aliases are missing.
        from tuneline.llm.registry import fetch_model

        return fetch_model(uri, Path(tempfile.mkdtemp())).model_dir
    if not path.exists():
        import mlflow

        from tuneline import settings

        mlflow.set_tracking_uri(settings.use_tracking())
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp()))
    from tuneline.llm.ml.models import SUMMARY_FILE

    found = sorted(path.rglob(SUMMARY_FILE), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"champion {uri}: no {SUMMARY_FILE} in {path}")
    return found[0].parent


def available_metrics(refs: list[str], schema: dict | None) -> list[str]:
    from tuneline.llm.ml.metrics import metric_names

    return metric_names(refs, schema)


def score(model, tokenizer, records, refs, schema, args, label: str, offset: int,
          total: int) -> tuple[dict[str, float], list[str], float]:
    """Metrics of one model; generation progress is reported as examples done out of `total` (all models)."""
    from tuneline.llm.ml.generate import generate, perplexity
    from tuneline.llm.ml.metrics import all_metrics
    from tuneline.step.progress import report

    started = time.perf_counter()
    report(offset, total, "example", model=label)
    preds = generate(model, tokenizer, records, args.max_new_tokens, args.batch_size,
                     on_batch=lambda done: report(offset + done, total, "example", model=label))
    metrics = all_metrics(preds, refs, schema)
    metrics["perplexity"] = perplexity(model, tokenizer, records, args.max_seq_len, args.batch_size)
    return metrics, preds, time.perf_counter() - started


def expressible(tokenizer, records, refs, max_seq_len: int):
    """The records (and their references) the model's chat template can express; the others are set aside with
    the template's reason, as the train step quarantines them."""
    from tuneline.llm.ml.chat import encode_all

    _, rejected = encode_all(tokenizer, records, max_seq_len)
    if not rejected:
        return records, refs, []
    out = {r.id for r in rejected}
    print(f"warning: {len(rejected)} of {len(records)} test records quarantined, the chat template cannot "
          f"express them; first: {rejected[0].id}: {rejected[0].reason}", file=sys.stderr)
    kept = [(r, ref) for r, ref in zip(records, refs, strict=True) if r.id not in out]
    if not kept:
        raise SystemExit(f"error: the chat template expresses none of the test records ({rejected[0].reason})")
    return [r for r, _ in kept], [ref for _, ref in kept], [{"id": r.id, "reason": r.reason} for r in rejected]


def judge_against_champion(args, records, refs, schema, predictions: dict[str, list[str]]):
    """The tuned model's win rate against the champion on these records."""
    from tuneline.llm.ml.metrics import example_scores
    from tuneline.llm.ml.winrate import outcomes, win_rate
    from tuneline.spec.metrics import direction

    if args.judge == "metric":
        metric = args.gate_metric.removeprefix("tuned.")
        tuned = example_scores(metric, predictions["tuned"], refs, schema)
        champion = example_scores(metric, predictions["champion"], refs, schema)
        return win_rate(outcomes(tuned, champion, direction(metric) == "max"), judge=f"metric:{metric}")
    from tuneline.llm.ml.judge import Contest, LLMJudge

    judge = LLMJudge(args.judge, args.judge_model)
    contests = [Contest("\n".join(m["content"] for m in r.prompt if m["role"] == "user"), tuned, champion, ref)
                for r, ref, tuned, champion in zip(records, refs, predictions["tuned"], predictions["champion"],
                                                   strict=True)]
    result = win_rate(judge.outcomes(contests), judge=judge.name)
    if judge.unreadable:
        print(f"warning: {judge.unreadable} of {2 * len(contests)} judge replies were not A, B or T (counted as "
              "ties)", file=sys.stderr)
    return result


def _check_choices(args: Namespace, gate: Gate, names: list[str], schema: dict | None) -> int | None:
    """Exit code 2 with the reason on stderr when the gate, the gate metric or the judge cannot work on this
    test split; None when they can."""
    from tuneline.spec.gates import GateError

    # Fail before loading any model when the gate, or the gate metric register will compare, names a metric this
    # evaluation cannot produce.
    gate_metric = args.gate_metric.removeprefix("tuned.")
    if gate_metric not in names:
        print(f"error: --gate-metric: '{gate_metric}' is not produced on {args.test} (available: {', '.join(names)})"
              "; choose one with --set gate_metric=... (e.g. rouge_l for free text)", file=sys.stderr)
        return 2
    from tuneline.spec.metrics import WIN_RATE_FIELDS as FIELDS

    probe = {m: dict.fromkeys(names, 0.0) for m in ("base", "tuned", "champion")} | {
        "win_rate": dict.fromkeys(FIELDS, 0.0)}
    try:
        gate.evaluate(probe)
    except GateError as err:
        print(f"error: --gates: {err}", file=sys.stderr)
        return 2
    if args.champion_uri and args.judge == "metric":
        from tuneline.llm.ml.metrics import example_scores

        try:  # the win rate judges each example by the gate metric: it must have a per-example score
            example_scores(gate_metric, [], [], schema)
        except ValueError as err:
            print(f"error: --judge metric: {err}; choose another --gate-metric or an LLM judge", file=sys.stderr)
            return 2
    elif args.judge != "metric" and not args.judge_model:
        print(f"error: --judge {args.judge}: name the model to ask with --judge-model", file=sys.stderr)
        return 2
    return None


def _score_models(args: Namespace, split_records: list, refs: list[str], schema: dict | None) -> tuple:
    """Generate and score with the base, the tuned and (when given) the champion model, one at a time;
    returns (results, predictions, timings, records, refs, quarantined, tuned summary)."""
    import torch

    from tuneline.llm.ml.models import (
        BASE_REVISION_KEY,
        load_causal_lm,
        load_tokenizer,
        load_tuned,
        read_summary,
        resolve_model,
    )

    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, dict[str, float]] = {}
    predictions: dict[str, list[str]] = {}
    timings: dict[str, float] = {}

    # The base model is compared at the Hub commit the tuned model was trained from, when it is the same model.
    trained = read_summary(args.model)
    base_path = resolve_model(args.base_model, revision=trained.get(BASE_REVISION_KEY)
                              if trained.get("base_model") == args.base_model else None)
    base = load_causal_lm(base_path, dtype=dtype).to(device).eval()
    base_tok = load_tokenizer(base_path, padding_side="left")
    records, refs, quarantined = expressible(base_tok, split_records, refs, args.max_seq_len)
    n, total = len(records), len(records) * (3 if args.champion_uri else 2)
    results["base"], predictions["base"], timings["base"] = score(base, base_tok, records, refs, schema, args,
                                                                  "base", 0, total)
    del base

    tuned, tuned_tok, summary = load_tuned(args.model, dtype=dtype)
    if summary.get("base_model") != args.base_model:
        print(f"warning: the tuned model was trained from {summary.get('base_model')!r}, "
              f"compared here with {args.base_model!r}", file=sys.stderr)
    tuned.to(device)
    results["tuned"], predictions["tuned"], timings["tuned"] = score(tuned, tuned_tok, records, refs, schema,
                                                                      args, "tuned", n, total)
    del tuned
    if args.champion_uri:
        champion, champion_tok, _ = load_tuned(resolve_champion(args.champion_uri), dtype=dtype)
        champion.to(device)
        results["champion"], predictions["champion"], timings["champion"] = score(
            champion, champion_tok, records, refs, schema, args, "champion", 2 * n, total)
    return results, predictions, timings, records, refs, quarantined, summary


def _write_outputs(args: Namespace, results: dict, gate_result: GateResult, samples: list[dict], meta: dict,
                   document: dict, contest: WinRate | None) -> None:
    """The passed flag, metrics and report files, the step summary, the MLflow run and the printed verdict."""
    from components.evaluate.report import render

    for path in (args.passed, args.metrics, args.report):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_value(args.passed, gate_result.passed)
    args.metrics.write_text(json.dumps(document, indent=2) + "\n")
    report = render(results, gate_result, samples, meta)
    args.report.write_text(report)
    from tuneline.step.summary import write_step_summary

    # The metrics table and gate verdicts; the samples stay in the report file.
    write_step_summary(report.split("\n## Samples")[0].removeprefix("# Evaluation report\n"))

    from tuneline.llm.ml.tracking import Run

    run = Run(run_id=args.mlflow_run_id, experiment=args.experiment, run_name="evaluate")
    run.log_metrics({f"eval.{m}.{k}": v for m, values in results.items() for k, v in values.items()})
    run.log_metrics({"eval.passed": float(gate_result.passed)})
    if contest:
        run.log_metrics({f"eval.win_rate.{k}": v for k, v in contest.metrics().items()})
    run.set_tags({"tuneline.eval.gates": gate_result.expression, "tuneline.eval.passed": str(gate_result.passed)})
    run.log_artifact(args.metrics, "evaluation")
    run.log_artifact(args.report, "evaluation")
    run.finish()
    print(f"gates {'passed' if gate_result.passed else 'failed'}: {gate_result.expression}")
    for model, values in results.items():
        print(f"{model}: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(values.items())))
    if contest:
        print(f"win rate against the champion: {contest.value:.3f} (95% CI {contest.lower:.3f}-{contest.upper:.3f}; "
              f"{contest.wins} won, {contest.ties} tied, {contest.losses} lost; judge {contest.judge})")


def main(argv: list[str] | None = None) -> int:
    args = parse_component_args(__file__, argv)
    disable_mlflow_telemetry()
    from tuneline.llm.ml.data import read_split
    from tuneline.spec.gates import Gate, GateError, expand

    try:
        # "{metric}" / "{better}" in a gate stand for --gate-metric and its direction, so one pipeline parameter
        # retargets the gates.
        gate = Gate(expand(args.gates, args.gate_metric))
    except GateError as err:
        print(f"error: --gates: {err}", file=sys.stderr)
        return 2
    split = read_split(args.test, limit=args.max_examples)
    schema = json.loads(args.schema.read_text()) if args.schema else None
    refs = [r.answer for r in split.records]
    names = available_metrics(refs, schema)
    if (code := _check_choices(args, gate, names, schema)) is not None:
        return code

    results, predictions, timings, records, refs, quarantined, summary = _score_models(args, split.records,
                                                                                      refs, schema)

    contest = None
    if args.champion_uri:
        from tuneline.llm.ml.judge import JudgeError
        from tuneline.llm.ml.winrate import TooFewExamples

        try:
            contest = judge_against_champion(args, records, refs, schema, predictions)
        except JudgeError as err:
            print(f"error: --judge: {err}", file=sys.stderr)
            return 1
        except TooFewExamples as err:
            # A gate on the win rate cannot be decided; without one the other figures still stand.
            if "win_rate" in gate.expression:
                print(f"error: --gates: win rate against the champion: {err} (raise --max-examples or the test "
                      "split)", file=sys.stderr)
                return 2
            print(f"warning: no win rate against the champion: {err}", file=sys.stderr)
    gate_result = gate.evaluate({**results, **({"win_rate": contest.metrics()} if contest else {})})
    meta = {"n_examples": len(refs), "test_sha256": split.sha256, "base_model": args.base_model,
            "tuned_method": summary.get("method", "?"), "max_new_tokens": args.max_new_tokens}
    if quarantined:
        meta["quarantined"] = quarantined
    if contest:
        from dataclasses import asdict

        meta["win_rate"] = asdict(contest)
    samples = [{"id": r.id, "reference": ref, **{m: predictions[m][i] for m in predictions}}
               for i, (r, ref) in enumerate(zip(records, refs, strict=True)) if i < args.samples]
    document = {
        "models": results,
        "gates": {"expression": gate_result.expression, "passed": gate_result.passed,
                  "clauses": [{"text": c.text, "value": c.value} for c in gate_result.clauses]},
        **meta,
        "seconds": timings,
        "predictions": [{"id": r.id, "reference": ref, **{m: predictions[m][i] for m in predictions}}
                        for i, (r, ref) in enumerate(zip(records, refs, strict=True))],
    }
    _write_outputs(args, results, gate_result, samples, meta, document, contest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
