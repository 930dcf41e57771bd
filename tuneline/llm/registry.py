"""MLflow model-registry helpers: experiments with artifacts under TUNELINE_HOME, registration with retry and
backoff, aliases, the champion promotion rule, and fetching a registered model back to disk.

The registry is whatever ``MLFLOW_TRACKING_URI`` names (default: SQLite under ``.tuneline/``). Stages are
deprecated in MLflow, so versions are addressed through aliases: ``candidate`` (the newest registered
version) and ``champion`` (the version that serves).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from tuneline import settings
from tuneline.llm.ml.models import SUMMARY_FILE
from tuneline.settings import DEFAULT_GATE_METRIC
from tuneline.spec.model_uri import parse_models_uri

T = TypeVar("T")

CANDIDATE = "candidate"
CHAMPION = "champion"
TAG_PREFIX = "tuneline."
# MLflow's limits for a model-version tag value and description (SQL column sizes).
MAX_TAG_VALUE = 5000
MAX_DESCRIPTION = 5000
# Words in the messages of errors that a retry can clear: SQLite writer contention, a server briefly
# unavailable, two writers computing the same next version number.
_TRANSIENT_WORDS = (
    "database is locked",
    "unique constraint",
    "integrityerror",
    "deadlock",
    "temporarily",
    "timed out",
    "connection reset",
    "connection refused",
    "503",
    "429",
    "resource_already_exists",
)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt k sleeps
    uniform(0, min(max_delay, base_delay * 2**k))."""

    attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 4.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2**attempt))


def is_transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    code = getattr(exc, "error_code", "") or ""
    return code in ("TEMPORARILY_UNAVAILABLE", "ABORTED", "RESOURCE_ALREADY_EXISTS") or any(
        word in text for word in _TRANSIENT_WORDS
    )


def with_retry(
    fn: Callable[[], T],
    what: str,
    policy: Backoff | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> T:
    """Call ``fn`` until it succeeds; transient failures are retried after a jittered, growing pause."""
    policy = policy or Backoff()
    rng = random.Random()  # seeded from the OS: parallel processes must not retry in lockstep
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below; non-transient errors propagate
            if not is_transient(exc) or attempt == policy.attempts - 1:
                raise
            pause = policy.delay(attempt, rng)
            log(
                f"{what}: transient error ({type(exc).__name__}: {str(exc)[:160]}); retry {attempt + 1} "
                f"in {pause:.2f}s"
            )
            time.sleep(pause)
    raise AssertionError("unreachable")


def client():
    """An `MlflowClient` on the tracking store; see `tuneline.settings.mlflow_client` (initialised under a lock)."""
    return settings.mlflow_client()


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def ensure_experiment(mlflow_client, name: str) -> str:
    """The experiment's id, creating it with artifacts under ``<TUNELINE_HOME>/mlartifacts`` for a local store
    (MLflow's default would be ``./mlruns`` in whatever folder the step happens to run in)."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if is_local_store(mlflow_client.tracking_uri):
        folder = (settings.home() / "mlartifacts" / name).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()

    def create() -> str:
        again = mlflow_client.get_experiment_by_name(name)
        if again is not None:  # a concurrent process created it between our look and our create
            return again.experiment_id
        return mlflow_client.create_experiment(name, artifact_location=location)

    return with_retry(create, f"create experiment {name}")


def code_version(root: Path | None = None) -> str:
    """The git commit of the source tree (``-dirty`` when it has changes), else the package version."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if commit:
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from tuneline import __version__

    return f"tuneline-{__version__}"


def weights_sha256(model_dir: Path | str) -> str:
    """A fingerprint of a Hugging Face folder's weights and config, to pin an adapter's base model."""
    model_dir = Path(model_dir)
    files = sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    )
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise FileNotFoundError(f"{model_dir}: no weight files (*.safetensors, *.bin)")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def clip(value: object, limit: int = MAX_TAG_VALUE) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 15] + " ...[truncated]"


# ------------------------------------------------------------------------------------------ versions


def register_version(
    mlflow_client,
    name: str,
    source: str,
    run_id: str,
    tags: dict[str, str],
    description: str = "",
    model_id: str | None = None,
    policy: Backoff | None = None,
    log: Callable[[str], None] = lambda _m: None,
):
    """Create (if needed) the registered model and a new version of it; safe against concurrent writers.

    A retried attempt first looks for a version this run already created, so a failure after the write
    committed never yields two versions of one run.
    """
    from mlflow.exceptions import MlflowException

    def ensure_model() -> None:
        try:
            mlflow_client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def create():
        existing = [
            v
            for v in mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
            if v.source == source or (model_id and getattr(v, "model_id", None) == model_id)
        ]
        if existing:
            return existing[0]
        return mlflow_client.create_model_version(
            name,
            source,
            run_id=run_id,
            tags=tags,
            description=clip(description, MAX_DESCRIPTION),
            model_id=model_id,
        )

    with_retry(ensure_model, f"create registered model {name}", policy, log)
    return with_retry(create, f"create a version of {name}", policy, log)


# Azure ML's MLflow registry supports stages and version tags but not aliases (azure-ai-docs articles/
# machine-learning/how-to-manage-models-mlflow.md, "Support matrix for managing models with MLflow"): on a
# workspace an alias is a version tag `tuneline.alias.<alias>` held by one version at a time.
ALIAS_TAG = TAG_PREFIX + "alias."


def aliases_supported(mlflow_client) -> bool:
    uri = getattr(mlflow_client, "_registry_uri", None) or settings.tracking_uri()
    return not settings.is_workspace_endpoint(uri)


def find_version(mlflow_client, name: str, tags: dict[str, str]):
    """The newest version of ``name`` carrying every tag in ``tags`` with that value, or None. The search filters
    on the first tag (a version tag filter of MLflow's search_model_versions); the rest are compared here."""
    if not tags:
        return None
    key, value = next(iter(tags.items()))

    def quoted(text: str) -> str:
        return text.replace("'", "\\'")

    found = with_retry(
        lambda: mlflow_client.search_model_versions(
            f"name='{quoted(name)}' and tags.`{key}` = '{quoted(value)}'"
        ),
        f"search versions of {name}",
    )
    matching = [v for v in found if all((v.tags or {}).get(k) == w for k, w in tags.items())]
    return max(matching, key=lambda v: int(v.version), default=None)


def set_alias(
    mlflow_client, name: str, alias: str, version: int | str, policy: Backoff | None = None
) -> None:
    if aliases_supported(mlflow_client):
        with_retry(
            lambda: mlflow_client.set_registered_model_alias(name, alias, str(version)),
            f"set alias {alias} of {name}",
            policy,
        )
        return
    tag = ALIAS_TAG + alias

    def move() -> None:
        # The new holder first, then the old ones: a reader in between sees two and takes the newer.
        mlflow_client.set_model_version_tag(name, str(version), tag, "true")
        for held in mlflow_client.search_model_versions(f"name='{name}'"):
            if held.tags.get(tag) and str(held.version) != str(version):
                mlflow_client.delete_model_version_tag(name, held.version, tag)

    with_retry(move, f"set alias tag {tag} of {name}", policy)


def version_by_alias(mlflow_client, name: str, alias: str):
    """The version carrying ``alias``, or None (no such model or alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        if not aliases_supported(mlflow_client):
            tag = ALIAS_TAG + alias
            held = [v for v in mlflow_client.search_model_versions(f"name='{name}'") if v.tags.get(tag)]
            return max(held, key=lambda v: int(v.version)) if held else None
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


# ------------------------------------------------------------------------------------------ promotion


@dataclass(frozen=True)
class PromotionRule:
    """Promote a candidate when its ``metric`` beats the champion's by more than ``min_delta``."""

    metric: str = DEFAULT_GATE_METRIC
    direction: Literal["max", "min"] = "max"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min"):
            raise ValueError(f"promotion direction must be 'max' or 'min', got {self.direction!r}")
        if not self.metric:
            raise ValueError("promotion metric name is empty")
        if self.min_delta < 0:
            raise ValueError(f"promotion min_delta must be >= 0, got {self.min_delta}")

    def beats(self, candidate: float, champion: float) -> bool:
        gain = candidate - champion if self.direction == "max" else champion - candidate
        return gain > self.min_delta


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str
    candidate_value: float
    champion_version: int | None = None
    champion_value: float | None = None


def metric_tag(model: str, metric: str) -> str:
    return f"{TAG_PREFIX}metric.{model}.{metric}"


def decide(
    rule: PromotionRule, candidate_value: float, champion_version: int | None, champion_value: float | None
) -> Promotion:
    """The promotion rule on its own: the first model is promoted; later ones must beat the champion."""
    if champion_version is None:
        return Promotion(True, "no champion yet", candidate_value)
    if champion_value is None:
        return Promotion(
            False,
            f"champion v{champion_version} has no {rule.metric} to compare with "
            f"(tag {metric_tag('tuned', rule.metric)}); promote it by hand if intended",
            candidate_value,
            champion_version,
        )
    better = rule.beats(candidate_value, champion_value)
    relation = "beats" if better else "does not beat"
    return Promotion(
        better,
        f"{rule.metric} {candidate_value:.4g} {relation} champion v{champion_version}'s "
        f"{champion_value:.4g} ({rule.direction}, min_delta {rule.min_delta:g})",
        candidate_value,
        champion_version,
        champion_value,
    )


@contextlib.contextmanager
def promotion_lock(name: str) -> Iterator[None]:
    """Serialise read-compare-set of the champion alias among processes sharing TUNELINE_HOME.

    MLflow has no compare-and-set for aliases; without this two parallel registrations could both read the
    old champion and the worse one could win the last write.
    """
    folder = settings.home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    with open(folder / f"registry-{safe}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def promote_if_better(
    mlflow_client,
    name: str,
    version: int,
    rule: PromotionRule,
    candidate_value: float,
    fresh_champion_value: float | None = None,
    fresh_champion_version: int | None = None,
) -> Promotion:
    """Move ``champion`` to ``version`` when the rule says so.

    The champion's score is ``fresh_champion_value`` when the evaluation scored that same champion version
    on the same test set, else the score recorded on the champion version when it was registered.
    """
    with promotion_lock(name):
        current = version_by_alias(mlflow_client, name, CHAMPION)
        champion_version = int(current.version) if current is not None else None
        value: float | None = None
        if current is not None:
            if fresh_champion_value is not None and fresh_champion_version == champion_version:
                value = fresh_champion_value
            else:
                recorded = (current.tags or {}).get(metric_tag("tuned", rule.metric))
                value = float(recorded) if recorded not in (None, "") else None
        decision = decide(rule, candidate_value, champion_version, value)
        if decision.promoted:
            set_alias(mlflow_client, name, CHAMPION, version)
    return decision


# ------------------------------------------------------------------------------------------ fetch


@dataclass(frozen=True)
class FetchedModel:
    """A registered tuneline model on local disk."""

    name: str
    version: int
    uri: str
    root: Path  # the MLflow model folder (MLmodel, python_model.py, artifacts/)
    model_dir: Path  # the train step's folder: adapter or full model + tokenizer + training_summary.json
    base_dir: Path | None  # the base weights bundled with the version, if any
    tags: dict[str, str]


def fetch_model(uri: str, dst: Path) -> FetchedModel:
    """Download a registered version (by number or alias) into ``dst`` and locate its parts."""
    name, version, alias = parse_models_uri(uri)
    mlflow_client = client()
    if alias is not None:
        found = version_by_alias(mlflow_client, name, alias)
        if found is None:
            raise LookupError(f"{uri}: registered model {name!r} has no version with alias {alias!r}")
    else:
        found = mlflow_client.get_model_version(name, version)
    exact = f"models:/{name}/{found.version}"
    dst.mkdir(parents=True, exist_ok=True)
    from tuneline.llm import workspace_files

    if workspace_files.is_datastore_uri(found.source or ""):
        # Registered on an Azure ML workspace from a step's output (components/register): the files are in the
        # workspace's datastore, which MLflow's artifact repositories cannot read without azureml-mlflow.
        root = workspace_files.download(name, found.version, found.source, dst)
    else:
        root = _download_artifacts(mlflow_client, name, found.version, dst)
    model_dir = root / "artifacts" / "model"
    if not (model_dir / SUMMARY_FILE).is_file():
        raise FileNotFoundError(
            f"{exact}: not a tuneline model (no artifacts/model/{SUMMARY_FILE} in {root})"
        )
    base_dir = root / "artifacts" / "base"
    return FetchedModel(
        name=name,
        version=int(found.version),
        uri=exact,
        root=root,
        model_dir=model_dir,
        base_dir=base_dir if (base_dir / "config.json").is_file() else None,
        tags=dict(found.tags or {}),
    )


def _download_artifacts(mlflow_client, name: str, version: str, dst: Path) -> Path:
    import mlflow

    return Path(
        # The version's own artifact location, asked of this client: MLflow resolves a `models:/` URI through
        # mlflow.get_registry_uri(), which follows a process-wide set_tracking_uri() (an earlier in-process step
        # sets one) rather than the store configured now, whatever registry_uri is passed.
        mlflow.artifacts.download_artifacts(
            artifact_uri=mlflow_client.get_model_version_download_uri(name, version), dst_path=str(dst),
            tracking_uri=settings.tracking_uri(),
        )
    )


def resolve_base_dir(fetched: FetchedModel) -> Path | None:
    """The base weights an adapter needs: bundled with the version, or resolved by name and checked against
    the
    fingerprint recorded at registration. None for a full model."""
    if not (fetched.model_dir / "adapter_config.json").is_file():
        return None
    if fetched.base_dir is not None:
        return fetched.base_dir
    from tuneline.llm.ml.models import read_summary, resolve_summary_base

    base = resolve_summary_base(read_summary(fetched.model_dir))
    expected = fetched.tags.get(f"{TAG_PREFIX}base_weights_sha256")
    if expected and os.environ.get("TUNELINE_SKIP_BASE_CHECK") != "1":
        actual = weights_sha256(base)
        if actual != expected:
            raise RuntimeError(
                f"{fetched.uri}: base model at {base} has weights sha256 {actual[:12]}..., the "
                f"version was registered against {expected[:12]}... (set TUNELINE_SKIP_BASE_CHECK=1 "
                "to override)"
            )
    return base
