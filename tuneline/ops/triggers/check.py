"""Run the pipeline's configured triggers and combine them into one decision (retrain when any fires)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ... import settings
from ...settings import DEFAULT_GATE_METRIC
from ...spec import Pipeline
from ...spec.models import Triggers
from .champion import check_age, default_model_name, find_champion
from .drift import check_drift, reference_source
from .newdata import check_new_data, dataset_param, last_successful_run, resolve
from .quality import EvalOptions, check_quality
from .ratings import check_ratings
from .result import Decision
from .tracking import last_submission


@dataclass
class CheckOptions:
    home: Path  # the project's state folder (.tuneline)
    dataset_param: str | None = None  # default: `dataset`, else the only uri_file parameter
    model_name: str | None = None  # default: the register step's model name, else the pipeline's
    metric: str = DEFAULT_GATE_METRIC  # the metric metric_drop applies to
    window: int = 1000  # most recent requests compared for drift
    min_requests: int = 50  # fewer requests than this: drift is not judged
    rating_window: int = 200  # most recent rated answers the ratings trigger judges
    min_ratings: int = 30  # fewer rated answers than this: the ratings trigger is not judged
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    now: float | None = None  # for the age trigger; None means the current time
    submitted_baseline: bool = False  # without a local run, compare with the last submitted run (tracking server)
    run_state: Callable[[str], str | None] | None = None  # a submitted run's state on its platform (None: unknown)


def declared_metric(pipeline: Pipeline) -> str:
    """`triggers.metric`, with ``${{params.<name>}}`` resolved to that parameter's value (``--set`` included),
    so the parameter that picks the gate metric picks the quality trigger's too."""
    from ...spec.load import ParamRef, parse_binding

    triggers = pipeline.spec.triggers or Triggers()
    ref = parse_binding(triggers.metric)
    return str(pipeline.params[ref.name]) if isinstance(ref, ParamRef) else triggers.metric


_PARAM_REF = re.compile(r"^\$\{\{\s*params\.([A-Za-z_][A-Za-z0-9_-]*)\s*\}\}$")


def resolved_triggers(pipeline: Pipeline) -> Triggers:
    """The pipeline's triggers with `requests_log: ${{params.NAME}}` replaced by that parameter's value, so the
    deploy step and the drift trigger read the one path the pipeline declares."""
    triggers = pipeline.spec.triggers or Triggers()
    found = _PARAM_REF.match(triggers.requests_log or "")
    if not found:
        return triggers
    name = found.group(1)
    if name not in pipeline.params:
        raise ValueError(f"{pipeline.path}: triggers.requests_log refers to unknown parameter {name!r}")
    return triggers.model_copy(update={"requests_log": str(pipeline.params[name])})


def run_check(pipeline: Pipeline, options: CheckOptions, client=None) -> Decision:
    """Evaluate every trigger of `pipeline.spec.triggers`; `client` is an MlflowClient (made when needed)."""
    triggers = resolved_triggers(pipeline)
    runs_dir = options.home / "runs"
    submitted = None
    if options.submitted_baseline and last_successful_run(runs_dir, pipeline.name) is None:
        client = client or settings.mlflow_client(options.home)
        submitted = last_submission(client, pipeline.name, options.run_state)
    results = [check_new_data(pipeline, triggers, runs_dir, options.dataset_param, submitted)]
    if triggers.drift_psi is not None or triggers.drift_ks is not None:
        dataset = resolve(pipeline, str(pipeline.params[dataset_param(pipeline, options.dataset_param)]))
        reference = reference_source(last_successful_run(runs_dir, pipeline.name), dataset)
    else:
        reference = Path()
    results.append(check_drift(triggers, pipeline.root, reference, options.window, options.min_requests))
    champion = None
    if triggers.max_age_days is not None or triggers.metric_drop is not None or triggers.rated_win_rate is not None:
        client = client or settings.mlflow_client(options.home)
        champion = find_champion(client, options.model_name or default_model_name(pipeline))
    results.append(
        check_quality(client, champion, triggers, pipeline.root, options.metric, options.evaluation)
    )
    results.append(check_age(champion, triggers, options.now))
    results.append(check_ratings(triggers, pipeline.root, champion, options.rating_window, options.min_ratings))
    return Decision(pipeline=pipeline.name, pipeline_path=str(pipeline.path), results=results)
