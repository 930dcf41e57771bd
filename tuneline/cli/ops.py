"""Sub-commands for operating a pipeline over time: `trigger`, `feedback` and `cost`.

Run as: tuneline trigger check pipelines/finetune.yaml [--run | --submit kfp|azureml] [--json]
        tuneline trigger azureml-schedule pipelines/finetune.yaml --out build/azureml/retrain-check
        tuneline feedback rate REQUEST_ID 5
        tuneline feedback export --min-rating 4 --out data/feedback.jsonl
        tuneline feedback export --kind pairs|kto --out data/preference.jsonl
        tuneline cost pipelines/finetune.yaml --target azureml [--spot] [--sku Standard_NC24ads_A100_v4]

`trigger check` exit codes: 0 no retrain needed; 10 retrain needed (with --run: the run started and
succeeded; with --submit: the run was submitted); 11 retrain needed and the --run pipeline run failed or the
--submit submission failed; 2 invalid pipeline, option or data file.
With --exit-zero (for schedulers that count any non-zero status as a failed job) 10 becomes 0, 11 becomes 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..spec.load import parse_set_pairs

EXIT_NO_RETRAIN, EXIT_RETRAIN, EXIT_RUN_FAILED, EXIT_INVALID = 0, 10, 11, 2


def _load(path: str, sets: list[str]):
    from ..spec import SpecError, load_pipeline

    try:
        return load_pipeline(path, parse_set_pairs(sets))
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _home(pipeline, home: str | None) -> Path:
    """The state folder, found as every command finds it (`tuneline.settings.state_home`)."""
    from .. import settings

    return settings.state_home(home)


# ---------------------------------------------------------------------------------------------- trigger


def cmd_trigger_check(args: argparse.Namespace) -> int:
    from tuneline.serving.requestlog import FeedbackError

    from .. import settings
    from ..ops.triggers import CheckOptions, run_check
    from ..ops.triggers import tracking as trigger_tracking
    from ..ops.triggers.check import declared_metric
    from ..ops.triggers.features import DataFileError
    from ..ops.triggers.newdata import TriggerConfigError
    from ..ops.triggers.quality import EvalOptions

    pipeline = _load(args.pipeline, args.set)
    if pipeline is None:
        return EXIT_INVALID
    home = _home(pipeline, args.home)
    # The pipeline run started by --run, and the registry lookups, must use the same store as the steps.
    settings.use_tracking(home)
    # Flags override the pipeline's `triggers:` block, which overrides the built-in defaults.
    declared = pipeline.spec.triggers
    options = CheckOptions(
        home=home,
        dataset_param=args.dataset_param or (declared.dataset_param if declared else None),
        model_name=args.model_name or (declared.model_name if declared else None),
        metric=args.metric or (declared_metric(pipeline) if declared else settings.DEFAULT_GATE_METRIC),
        window=args.window,
        min_requests=args.min_requests,
        evaluation=EvalOptions(max_examples=args.max_examples),
        submitted_baseline=bool(args.submit),
        run_state=_run_state(args) if args.submit else None,
    )
    try:
        decision = run_check(pipeline, options)
    except (TriggerConfigError, DataFileError, FeedbackError, ValueError, FileNotFoundError) as exc:
        print(f"tuneline trigger check: {exc}", file=sys.stderr)
        return EXIT_INVALID
    client = None if args.no_record else settings.mlflow_client(home)
    if client is not None:
        trigger_tracking.start(client, home, pipeline, decision)
    if decision.retrain and args.run:
        decision.pipeline_run = _retrain(pipeline, home, args, decision)
    if decision.retrain and args.submit:
        decision.pipeline_run = _submit(args, pipeline, home)
    if client is not None:
        trigger_tracking.finish(client, decision)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2, default=str))
    else:
        print(decision.render())
    if not decision.retrain:
        return EXIT_NO_RETRAIN
    if decision.pipeline_run and decision.pipeline_run["exit_code"] != 0:
        return 1 if args.exit_zero else EXIT_RUN_FAILED
    return 0 if args.exit_zero else EXIT_RETRAIN


def _retrain(pipeline, home: Path, args: argparse.Namespace, decision) -> dict:
    """Run the pipeline through the runner's API; the record it returns says which run it was."""
    from ..graph import build_graph
    from ..ops.cost.comparison import cost_comparison
    from ..targets.local.report import exit_code, run_and_report
    from ..targets.local.runner import RunOptions, StepFailed

    out = sys.stderr if args.json else sys.stdout  # with --json, stdout stays a single JSON document
    print(decision.render(), file=out, flush=True)
    print(f"starting a pipeline run: tuneline run {args.pipeline}", file=out, flush=True)
    try:
        record = run_and_report(build_graph(pipeline), RunOptions(home=home), out, afterword=cost_comparison)
    except StepFailed as exc:
        print(f"tuneline trigger check: {exc}", file=sys.stderr)
        return {"run_id": None, "status": "not-started", "exit_code": EXIT_INVALID}
    return {"run_id": record.run_id, "status": record.status, "exit_code": exit_code(record)}


def _submit_settings(args: argparse.Namespace):
    from ..targets import submit

    return submit.settings_from_args(args.submit, args, os.environ)


def _run_state(args: argparse.Namespace):
    """How the check asks the platform whether a submitted run failed (see triggers.tracking.last_submission)."""
    from ..targets import submit

    settings = _submit_settings(args)
    return lambda run_id: submit.run_state(args.submit, run_id, settings)


def _submit(args: argparse.Namespace, pipeline, home: Path) -> dict:
    """Compile and submit the pipeline to KFP or Azure ML; the run record `trigger check` reports and logs."""
    from ..targets import submit

    where = _submit_settings(args)
    print(f"submitting a pipeline run to {args.submit}", file=sys.stderr, flush=True)
    stdout = sys.stdout
    sys.stdout = sys.stderr  # the SDKs print links; stdout stays the decision
    try:
        done = submit.submit_pipeline(pipeline.path, args.submit, home / "submit", parse_set_pairs(args.set),
                                      parse_set_pairs(args.submit_param), where,
                                      submit.submission_options(args.images, submit.platform_options_from_args(
                                          (args.submit,), args)))
    except Exception as exc:  # noqa: BLE001 - any SDK or network failure is a failed submission, reported
        from .errors import next_step

        print(f"tuneline trigger check: submission to {args.submit} failed: {next_step(exc, args) or exc}",
              file=sys.stderr)
        return {"run_id": None, "status": "submit-failed", "exit_code": 1, "target": args.submit}
    finally:
        sys.stdout = stdout
    for line in done.lines:
        print(f"{args.submit}: {line}", file=sys.stderr)
    return {"run_id": done.run_id, "status": "submitted", "exit_code": 0, "target": args.submit}


def cmd_trigger_azureml(args: argparse.Namespace) -> int:
    from ..targets.azureml.retrain import ScheduleOptions, write_schedule

    pipeline = _load(args.pipeline, [])
    if pipeline is None:
        return EXIT_INVALID
    options = ScheduleOptions(
        compute=args.compute,
        environment=args.environment,
        registry=args.image_registry,
        tag=args.image_tag,
        cron=args.cron,
        timezone=args.timezone,
        code=args.code,
        data=args.data,
    )
    try:
        job, schedule = write_schedule(pipeline, Path(args.out), options)
    except ValueError as exc:
        print(f"tuneline trigger azureml-schedule: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {job}\nwrote {schedule}\ncreate it with: az ml schedule create --file {schedule}")
    return 0


# ---------------------------------------------------------------------------------------------- feedback


def _feedback_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    from tuneline.serving.requestlog import ENV_LOG, RATINGS_FILE

    from .. import settings

    # The defaults are where a pipeline's local endpoint writes (the demo's `requests_log`, the serve state
    # folder) and where the endpoint keeps ratings: beside the log it rates against.
    home = settings.state_home(args.home)
    log = Path(args.log or os.environ.get(ENV_LOG) or settings.default_request_log(home))
    ratings = Path(args.ratings or log.with_name(RATINGS_FILE))
    return log, ratings


def cmd_feedback_rate(args: argparse.Namespace) -> int:
    from tuneline.serving.requestlog import FeedbackError, RatingStore

    _, ratings = _feedback_paths(args)
    try:
        RatingStore(ratings).rate(args.request_id, args.rating, args.comment, correction=args.correction)
    except FeedbackError as exc:
        print(f"tuneline feedback rate: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"rated {args.request_id}: {args.rating}{' with a correction' if args.correction else ''} ({ratings})")
    return 0


def cmd_feedback_export(args: argparse.Namespace) -> int:
    from tuneline.ops.feedback import export
    from tuneline.serving.requestlog import FeedbackError

    log, ratings = _feedback_paths(args)
    try:
        result = export(log, ratings, args.out, min_rating=args.min_rating, system=args.system, kind=args.kind,
                        max_bad_rating=args.max_bad_rating, min_gap=args.min_gap)
    except FeedbackError as exc:
        print(f"tuneline feedback export: {exc}", file=sys.stderr)
        return EXIT_INVALID
    what, rule, usable = {
        "sft": ("chat records", f"rating >= {args.min_rating}", "high ratings"),
        "pairs": ("preference pairs", f"ratings at least {args.min_gap} apart, or a correction", "ratings"),
        "kto": ("kto records", f"desirable: rating >= {args.min_rating}, undesirable: rating <= "
                               f"{args.max_bad_rating}", "usable ratings"),
    }[result.kind]
    by = f" = {' + '.join(f'{n} {source}' for source, n in result.written_by.items())}" if result.written_by else ""
    print(
        f"wrote {result.written} {what}{by} to {args.out} ({rule}; {result.logged} logged "
        f"requests, {result.rated} rated, {result.unmatched_ratings} {usable} no longer in the log)"
    )
    if result.dropped:
        print("dropped: " + ", ".join(f"{reason} {count}" for reason, count in sorted(result.dropped.items())))
    return 0


# ---------------------------------------------------------------------------------------------- cost


def cmd_cost(args: argparse.Namespace) -> int:
    from ..ops.cost import DEFAULT_PRICES, CostError, estimate, load_prices, render

    pipeline = _load(args.pipeline, args.set)
    if pipeline is None:
        return EXIT_INVALID
    from ..ops.cost.memory import memory_plan, render_plan

    try:
        prices = load_prices(Path(args.prices) if args.prices else pipeline.root / DEFAULT_PRICES)
        plan = memory_plan(pipeline, _home(pipeline, args.home), "azureml" if args.target == "azureml" else "aks")
        report = estimate(
            pipeline,
            prices,
            target=args.target,
            sku=args.sku,
            spot=args.spot,
            home=_home(pipeline, args.home),
            tokenizer=args.tokenizer,
            mfu=args.mfu,
            calibrate=args.calibrate,
        )
    except (CostError, ValueError) as exc:
        print(f"tuneline cost: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps({**report.to_dict(), "memory": plan.to_dict() if plan else None}, indent=2))
    else:
        print(render(report))
        print("\n" + (render_plan(plan) if plan else "memory plan: no config.json for the base model on this "
                      "machine (a local model folder, the model cache, or data/model-configs/<org>/<name>)"))
    return 0


# ---------------------------------------------------------------------------------------------- parser


def add_commands(subparsers) -> None:
    """Add `trigger`, `feedback` and `cost` to tuneline's sub-command parsers."""
    trigger = subparsers.add_parser("trigger", help="retraining triggers: new data, drift, quality, age")
    trigger_sub = trigger.add_subparsers(dest="trigger_command", required=True)
    _add_trigger_check(trigger_sub)
    _add_trigger_azureml(trigger_sub)
    _add_feedback(subparsers)
    _add_cost(subparsers)


def _add_set(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help=help_text)


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None, help="state folder (default: $TUNELINE_HOME, else .tuneline/ in the "
                                                     "project of the current folder)")


def _add_trigger_check(trigger_sub) -> None:
    check = trigger_sub.add_parser(
        "check",
        help="evaluate the pipeline's triggers: block and print a decision",
        description=__doc__.split("\n\n")[2],
    )
    check.add_argument("pipeline", help="pipeline YAML file with a triggers: block")
    how = check.add_mutually_exclusive_group()
    how.add_argument("--run", action="store_true", help="start a local pipeline run when a trigger fires")
    from ..targets.submit import add_setting_flags, submit_targets

    how.add_argument("--submit", choices=submit_targets(), default=None,
                     help="when a trigger fires, compile the pipeline and submit a run to that target's platform "
                          "through its SDK client")
    check.add_argument("--submit-param", action="append", default=[], metavar="NAME=VALUE",
                       help="--submit: a run argument, e.g. dataset=<object-store URI> (repeatable)")
    check.add_argument("--images", default=None, metavar="FILE",
                       help="--submit: image lock (`registry:` and a sha256 digest per environment) the run's steps "
                            "are pinned to")
    add_setting_flags(check, submit_targets(), prefix="--submit {target}: ")
    check.add_argument("--json", action="store_true", help="print the decision as JSON")
    _add_set(check, "override a pipeline parameter, as for `tuneline run` (repeatable)")
    _add_home(check)
    check.add_argument(
        "--dataset-param",
        default=None,
        help="parameter naming the training data (default: 'dataset', else the only uri_file one)",
    )
    check.add_argument(
        "--model-name",
        default=None,
        help="registered model (default: the register step's model name, else the pipeline name)",
    )
    check.add_argument(
        "--metric", default=None, help="metric that metric_drop applies to (default: triggers.metric, exact_match)"
    )
    check.add_argument(
        "--window",
        type=int,
        default=1000,
        help="most recent requests compared for drift (default: %(default)s)",
    )
    check.add_argument(
        "--min-requests",
        type=int,
        default=50,
        help="fewer logged requests than this: drift is not judged (default: %(default)s)",
    )
    check.add_argument(
        "--max-examples",
        type=int,
        default=64,
        help="fresh labelled examples the champion is re-evaluated on (default: %(default)s)",
    )
    check.add_argument("--no-record", action="store_true", help="do not record the decision in MLflow")
    check.add_argument(
        "--exit-zero",
        action="store_true",
        help="exit 0 when a retrain is needed (or ran OK), 1 when the run failed: for cron jobs",
    )
    check.set_defaults(handler=cmd_trigger_check)


def _add_trigger_azureml(trigger_sub) -> None:
    azml = trigger_sub.add_parser(
        "azureml-schedule", help="write an Azure ML command job + schedule that runs `trigger check --submit azureml`"
    )
    azml.add_argument("pipeline", help="pipeline YAML file")
    azml.add_argument(
        "--out", default="build/azureml/retrain-check", help="output folder (default: %(default)s)"
    )
    azml.add_argument(
        "--compute", default="cpu-cluster", help="Azure ML compute cluster (default: %(default)s)"
    )
    azml.add_argument(
        "--environment",
        default=None,
        help="Azure ML environment with tuneline installed, e.g. azureml:tuneline-control@latest (default: the "
             "control image inline, from the pipeline's images: or --image-registry/--image-tag)",
    )
    azml.add_argument("--image-registry", default=None, help="registry of the control image (over the pipeline's)")
    azml.add_argument("--image-tag", default=None, help="tag of the control image (over the pipeline's)")
    azml.add_argument(
        "--cron", default=None, help="cron expression (default: the pipeline's schedule, else daily 03:00)"
    )
    azml.add_argument("--timezone", default=None, help="time zone (default: the pipeline's, else UTC)")
    azml.add_argument(
        "--code",
        default=None,
        help="project root as seen from --out (default: the relative path from --out to the root)",
    )
    azml.add_argument("--data", default=None, metavar="URI",
                      help="the dataset's Azure ML URI (azureml://datastores/<store>/paths/<file>): the check reads "
                           "it mounted, the submitted run gets it (default: the pipeline's own dataset)")
    azml.set_defaults(handler=cmd_trigger_azureml)


def _add_feedback(subparsers) -> None:
    from .. import settings

    feedback = subparsers.add_parser("feedback", help="ratings of served answers, exported as training data")
    fb_sub = feedback.add_subparsers(dest="feedback_command", required=True)
    for name, helptext in (
        ("rate", "rate a logged request 1-5"),
        ("export", "write rated interactions as chat, preference-pair or KTO JSONL"),
    ):
        p = fb_sub.add_parser(name, help=helptext)
        p.add_argument(
            "--log",
            default=None,
            help=f"request log (default: ${settings.REQUEST_LOG_ENV}, "
            f"else {settings.HOME_FOLDER}/serve/{settings.REQUEST_LOG_FILE})",
        )
        p.add_argument(
            "--ratings", default=None, help="rating store (default: ratings.jsonl beside the request log)"
        )
        p.add_argument("--home", default=None, help="state folder (default: $TUNELINE_HOME or ./.tuneline)")
        if name == "rate":
            p.add_argument("request_id", help="the id the request log gave the request")
            p.add_argument("rating", type=int, choices=range(1, 6), help="1 (bad) to 5 (excellent)")
            p.add_argument("--comment", default="", help="free text kept with the rating")
            p.add_argument("--correction", default="",
                           help="the answer that should have been served: exported as the preferred answer "
                                "(--kind pairs: against the served one; --kind kto: a desirable record)")
            p.set_defaults(handler=cmd_feedback_rate)
        else:
            p.add_argument("--kind", choices=("sft", "pairs", "kto"), default="sft",
                           help="sft: well-rated answers as chat records; pairs: preference pairs (two answers "
                                "to one conversation rated apart, or a correction against the served "
                                "answer); kto: answers labelled good or bad (default: %(default)s)")
            p.add_argument(
                "--min-rating",
                type=int,
                default=4,
                choices=range(1, 6),
                help="lowest rating exported (sft), lowest rating labelled desirable (kto) (default: %(default)s)",
            )
            p.add_argument("--max-bad-rating", type=int, default=2, choices=range(1, 6),
                           help="highest rating labelled undesirable (kto) (default: %(default)s)")
            p.add_argument("--min-gap", type=int, default=1, choices=range(1, 5),
                           help="smallest rating gap between the chosen and the rejected answer (pairs) "
                                "(default: %(default)s)")
            p.add_argument("--out", required=True, help="JSONL file to write (replaced whole)")
            p.add_argument(
                "--system",
                default=None,
                help="system prompt added to records without one (e.g. the training data's)",
            )
            p.set_defaults(handler=cmd_feedback_export)


def _add_cost(subparsers) -> None:
    cost = subparsers.add_parser("cost", help="estimate training time and money before a run")
    cost.add_argument("pipeline", help="pipeline YAML file with a train step")
    cost.add_argument(
        "--target",
        choices=("aks", "azureml", "local"),
        default="azureml",
        help="where the run would go (default: %(default)s)",
    )
    cost.add_argument(
        "--sku", default=None, help="highlight this SKU (default: the train step's instance type)"
    )
    cost.add_argument("--spot", action="store_true", help="price the highlighted SKU at the spot rate")
    _add_set(cost, "override a pipeline parameter (repeatable)")
    cost.add_argument(
        "--prices", default=None, help="price table (default: config/prices.yaml of the project)"
    )
    cost.add_argument(
        "--tokenizer",
        choices=("auto", "real", "estimate"),
        default="auto",
        help="count tokens with the base model's tokenizer (real), a regex estimate, or real when "
        "the model is already on disk (auto, the default)",
    )
    cost.add_argument(
        "--mfu",
        type=float,
        default=None,
        help="model FLOP utilisation for the FLOP-based estimate (default: from the price table)",
    )
    cost.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this machine's matmul throughput again instead of reusing the cached figure",
    )
    _add_home(cost)
    cost.add_argument("--json", action="store_true", help="print the estimate as JSON")
    cost.set_defaults(handler=cmd_cost)
