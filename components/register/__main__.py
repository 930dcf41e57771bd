"""Register a tuned model that passed its evaluation gate: MLflow pyfunc + registry version + model card +
aliases (``candidate`` always; ``champion`` when it beats the current champion on the gate metric).

Run as: python -m components.register --model out/model --metrics out/metrics.json --name tuneline-llm \
    --model-uri-out out/model_uri --version-out out/version --promoted-out out/promoted
Override example: --gate-metric perplexity --base-weights bundle   (compared as min: --gate-direction auto)

The registry is MLFLOW_TRACKING_URI (default: SQLite under .tuneline/). On an Azure ML workspace, whose artifact
store only azureml-mlflow can write, the model, the evaluation and the card are saved into the `files` output and
the version's source is that output's datastore URI (tuneline/llm/workspace_files.py); elsewhere they are logged
to the tracking server and `files` holds only registered.json. Writes to it are retried with
jittered exponential backoff, so parallel registrations get distinct versions. Exits 2 on bad input.

The step is not cached (component.yaml): the champion comparison is against the registry as it is now, which a
cache key of inputs cannot see (an alias moved by hand, a version deleted, another tracking server). A re-run on
the same trained model (its MLflow run id) with the same evaluation reuses the version it registered instead of
adding a duplicate; a version that was champion once and has been replaced since (a rollback) is not promoted
again by such a re-run.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from components.register.card import CardContext, render_card
from components.register.inputs import Evaluation, InputError, TrainedModel, read_evaluation, read_trained_model
from tuneline.settings import disable_mlflow_telemetry
from tuneline.step.args import parse_component_args
from tuneline.step.outputs import write_value


def _tags(
    trained, evaluation, code: str, pipeline_run: str, base_sha: str, gate_metric: str
) -> dict[str, str]:
    from tuneline.llm.ml.models import BASE_REVISION_KEY
    from tuneline.llm.registry import TAG_PREFIX, clip, metric_tag

    tags = {
        f"{TAG_PREFIX}base_model": trained.base_model,
        f"{TAG_PREFIX}{BASE_REVISION_KEY}": trained.summary.get(BASE_REVISION_KEY) or "",
        f"{TAG_PREFIX}method": trained.method,
        f"{TAG_PREFIX}data_sha256": trained.data_sha256,
        f"{TAG_PREFIX}test_sha256": evaluation.test_sha256,
        f"{TAG_PREFIX}code_version": code,
        f"{TAG_PREFIX}pipeline_run_id": pipeline_run,
        f"{TAG_PREFIX}train_run_id": trained.train_run_id,
        f"{TAG_PREFIX}base_weights_sha256": base_sha,
        f"{TAG_PREFIX}gate_metric": gate_metric,
        f"{TAG_PREFIX}gate": clip(evaluation.gates.get("expression", "")),
        f"{TAG_PREFIX}hyperparameters": clip(trained.hyperparameters),
    }
    for key, value in trained.hyperparameters.items():
        tags[f"{TAG_PREFIX}hparam.{key}"] = clip(value if isinstance(value, str) else json.dumps(value))
    for model, scores in evaluation.models.items():
        for metric, value in scores.items():
            tags[metric_tag(model, metric)] = repr(value)
    return {k: v for k, v in tags.items() if v != ""}


def _identity(tags: dict[str, str]) -> dict[str, str]:
    """The tags that make two registrations the same evaluated model: the training run first (the registry
    search filters on it), its data, the test set, the gate metric and the tuned model's scores (the champion's
    scores change with the champion, not with this model)."""
    from tuneline.llm.registry import TAG_PREFIX

    keys = [f"{TAG_PREFIX}{k}" for k in ("train_run_id", "data_sha256", "test_sha256", "gate_metric")]
    found = {k: tags[k] for k in keys if k in tags}
    found.update({k: v for k, v in tags.items() if k.startswith(f"{TAG_PREFIX}metric.tuned.")})
    return found


def _recorded_card(version) -> str:
    """The model card logged when `version` was registered (its description is clipped)."""
    import mlflow

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="model_card.md",
                                                       dst_path=tmp)
            return Path(path).read_text()
    except Exception:  # noqa: BLE001 - a card that cannot be fetched falls back to the description
        return version.description or ""


def _direction(given: str, metric: str) -> str:
    """``auto``: the metric's own direction (``tuneline.llm.ml.metrics.direction``, e.g. min for perplexity)."""
    from tuneline.spec.metrics import direction

    return direction(metric) if given == "auto" else given


def main(argv: list[str] | None = None) -> int:
    args = parse_component_args(__file__, argv)
    disable_mlflow_telemetry()
    from tuneline.llm.registry import PromotionRule

    gate_metric = args.gate_metric.removeprefix("tuned.")
    try:
        trained = read_trained_model(args.model)
        evaluation = read_evaluation(args.metrics)
        rule = PromotionRule(gate_metric, _direction(args.gate_direction, gate_metric), args.min_delta)
        candidate_value = evaluation.value("tuned", gate_metric)
    except (InputError, ValueError) as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 2

    import mlflow

    from tuneline import settings
    from tuneline.llm import registry

    def log(message: str) -> None:
        print(f"register: {message}", file=sys.stderr)

    mlflow.set_tracking_uri(settings.use_tracking())
    client = registry.client()
    pipeline_run = settings.pipeline_run_id()  # KFP and local: TUNELINE_RUN_ID; Azure ML: the pipeline job
    code = registry.code_version()
    identity = _identity(_tags(trained, evaluation, code, pipeline_run, "", gate_metric))
    existing = registry.find_version(client, args.name, identity) if trained.train_run_id else None
    if existing is not None:
        return _finish(args, client, int(existing.version), _recorded_card(existing), rule, candidate_value,
                       evaluation, existing, log)
    experiment = registry.ensure_experiment(client, args.experiment)
    from tuneline.llm.ml.tracking import unservable_artifact_uri

    # A workspace's artifact root is an azureml:// one that only azureml-mlflow serves: the model goes into the
    # step's `files` output instead, and the version points at that output's datastore URI (workspace_files).
    unservable = unservable_artifact_uri(client.get_experiment(experiment).artifact_location)
    on_workspace = bool(unservable) and settings.is_workspace_endpoint(client.tracking_uri)
    if unservable and not on_workspace:
        log(f"cannot log the model: {unservable}")
        return 2
    run_tags = {
        "tuneline.step": "register",
        "tuneline.pipeline_run": pipeline_run,
        "tuneline.train_run_id": trained.train_run_id,
        "mlflow.source.git.commit": code,
    }
    run = registry.with_retry(
        lambda: client.create_run(
            experiment, run_name=f"register-{args.name}", tags={k: v for k, v in run_tags.items() if v}
        ),
        "create run",
        log=log,
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        number, card = _log_and_register(args, client, run_id, trained, evaluation, code, pipeline_run,
                                         gate_metric, rule, log, on_workspace)
        decision = _decide(args, client, number, rule, candidate_value, evaluation, None, log)
        status = "FINISHED"
    finally:
        registry.with_retry(lambda: client.set_terminated(run_id, status=status), "end run", log=log)

    return _write_outputs(args, number, card, decision, log)


def _log_and_register(args, client, run_id: str, trained: TrainedModel, evaluation: Evaluation, code: str,
                      pipeline_run: str, gate_metric: str, rule, log, on_workspace: bool = False) -> tuple[int, str]:
    """Log the model and the evaluation to run `run_id` (on a workspace: save them into the `files` output),
    register the version and give it its card; returns (version number, card)."""
    import mlflow

    from components.register.logmodel import log_pyfunc
    from tuneline.llm import registry

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {f"eval.{m}.{k}": v for m, s in evaluation.models.items() for k, v in s.items()}
        )
        if on_workspace:
            source, model_id, base_sha = _save_to_output(args, run_id, trained)
        else:
            info, base_sha = registry.with_retry(
                lambda: log_pyfunc(trained, args.base_weights, args.system_prompt or ""), "log model", log=log
            )
            mlflow.log_artifact(str(args.metrics), "evaluation")
            source, model_id = info.model_uri, getattr(info, "model_id", None)
            _record_files(args.files, {"model_uri_source": source, "in": "the tracking server's artifacts"})
    tags = _tags(trained, evaluation, code, pipeline_run, base_sha, gate_metric)
    version = registry.register_version(client, args.name, source, run_id, tags, model_id=model_id, log=log)
    number = int(version.version)
    base_ref = (
        (
            "bundled with the version"
            if args.base_weights == "bundle"
            else f"resolved by name, weights sha256 {base_sha[:16]}..."
        )
        if trained.is_adapter
        else "full weights"
    )
    card = render_card(
        CardContext(
            name=args.name,
            version=number,
            trained=trained,
            evaluation=evaluation,
            code_version=code,
            pipeline_run_id=pipeline_run,
            base_reference=base_ref,
            gate_metric=f"{gate_metric} ({rule.direction})",
        )
    )
    if on_workspace:
        (args.files / run_id / "model_card.md").write_text(card)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            card_path = Path(tmp) / "model_card.md"
            card_path.write_text(card)
            client.log_artifact(run_id, str(card_path))
    registry.with_retry(
        lambda: client.update_model_version(
            args.name, str(number), description=registry.clip(card, registry.MAX_DESCRIPTION)
        ),
        "set description",
        log=log,
    )
    return number, card


def _save_to_output(args, run_id: str, trained: TrainedModel) -> tuple[str, None, str]:
    """On a workspace: the pyfunc model and the evaluation saved under `<files>/<run id>/` (Azure ML keeps the
    output in the workspace's datastore); returns (the model folder's datastore URI, no logged model, base sha)."""
    import shutil

    from components.register.logmodel import save_pyfunc
    from tuneline.llm.workspace_files import output_uri

    folder = args.files / run_id
    base_sha = save_pyfunc(trained, folder / "model", args.base_weights, args.system_prompt or "")
    (folder / "evaluation").mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.metrics, folder / "evaluation" / Path(args.metrics).name)
    source = output_uri("files", run_id, "model")
    _record_files(args.files, {"model_uri_source": source, "in": "this output"})
    return source, None, base_sha


def _record_files(folder: Path, where: dict[str, str]) -> None:
    """What the `files` output says about where the registered model's files are (never an empty output)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "registered.json").write_text(json.dumps(where, indent=2) + "\n")


def _decide(args, client, number: int, rule, candidate_value: float, evaluation, existing, log):
    """Set `candidate` to the version and decide `champion` against the registry as it is now."""
    from tuneline.llm import registry

    registry.set_alias(client, args.name, registry.CANDIDATE, number)
    current = registry.version_by_alias(client, args.name, registry.CHAMPION)
    was_promoted = existing is not None and (existing.tags or {}).get(f"{registry.TAG_PREFIX}promoted") == "true"
    if current is not None and int(current.version) == number:
        decision = registry.Promotion(True, f"v{number} is already the champion", candidate_value, number)
    elif was_promoted:
        decision = registry.Promotion(
            False,
            f"v{number} was champion before and has been replaced since (a rollback?): a re-run does not promote "
            f"it again; move the champion alias by hand to serve it",
            candidate_value,
        )
    else:
        fresh = evaluation.models.get("champion", {}).get(rule.metric)
        decision = registry.promote_if_better(
            client,
            args.name,
            number,
            rule,
            candidate_value,
            fresh_champion_value=fresh,
            fresh_champion_version=evaluation.champion_version,
        )
    # `promoted` records that the version became champion once: a later rollback leaves it true
    values = {"promoted": str(decision.promoted or was_promoted).lower(), "promotion_reason": decision.reason}
    for key, value in values.items():
        registry.with_retry(
            lambda k=key, v=value: client.set_model_version_tag(
                args.name, str(number), f"{registry.TAG_PREFIX}{k}", v
            ),
            "tag version",
            log=log,
        )
    return decision


def _finish(args, client, number: int, card: str, rule, candidate_value: float, evaluation, existing, log) -> int:
    log(f"v{number} already holds this trained model with this evaluation: reused, not registered again")
    decision = _decide(args, client, number, rule, candidate_value, evaluation, existing, log)
    return _write_outputs(args, number, card, decision, log)


def _write_outputs(args, number: int, card: str, decision, log) -> int:
    model_uri = f"models:/{args.name}/{number}"
    write_value(args.model_uri, model_uri)
    write_value(args.version, number)
    write_value(args.promoted, decision.promoted)
    args.card.parent.mkdir(parents=True, exist_ok=True)
    args.card.write_text(card)
    if not (args.files / "registered.json").is_file():  # a reused version: its files are where it was registered
        _record_files(args.files, {"model_uri_source": model_uri, "in": "the version registered before"})
    log(
        f"{model_uri} registered (alias candidate); champion: "
        f"{'v' + str(number) if decision.promoted else 'unchanged'} - {decision.reason}"
    )
    print(model_uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
