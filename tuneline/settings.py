"""Where tuneline keeps its state, decided in one place.

- home (runs, cache, models, MLflow store, serving state): `--home`, else `$TUNELINE_HOME`, else `.tuneline/` in
  the project of the current folder: the nearest folder at or above it that holds `.tuneline/`, `components/`
  or `.git`, else the current folder itself (`state_home`). Every command finds it the same way, so
  `tuneline runs list` run where `tuneline run` was sees its runs, whichever folder the pipeline file is in;
- tracking URI: `$MLFLOW_TRACKING_URI`, else a SQLite store `<home>/mlflow.db` (a `mlflow server` works
  unchanged when the variable is set; an Azure ML workspace's `azureml://` URI needs the azureml-mlflow plugin,
  which no image can carry yet: see `check_tracking_store`);
- pipeline run id: `$TUNELINE_RUN_ID` (the local runner and KFP set it), else `$AZUREML_ROOT_RUN_ID` (what
  Azure ML gives each step of a pipeline job: the pipeline job's run id);
- serve state: `$TUNELINE_SERVE_STATE`, else `<home>/serve`;
- serve venv: `$TUNELINE_SERVE_VENV`, else `./.tuneline/serve-venv`, else the one in tuneline's own checkout.
  It is an installation rather than state (minutes of pip), so a scratch TUNELINE_HOME (a test, a second
  project copy, a repository of one's own) reuses it instead of building another.

The make targets (mk/*.mk) use the same variables with the same defaults. `mlflow_client()` is the one way
to open the tracking store: MLflow creates and migrates a fresh SQLite database on first use, two processes
doing that at once fail ("duplicate column name"), and a file lock beside the database lets one of them do it.
"""

from __future__ import annotations

import fcntl
import os
from importlib.metadata import entry_points
from pathlib import Path

HOME_FOLDER = ".tuneline"
# Azure ML sets MLFLOW_TRACKING_URI to the workspace's azureml:// URI in every job, and that scheme is served by
# the azureml-mlflow plugin, which registers it in the `mlflow.tracking_store` entry-point group that MLflow loads
# stores from (https://learn.microsoft.com/azure/machine-learning/how-to-use-mlflow-configure-tracking).
# Every azureml-mlflow release caps mlflow-skinny below the mlflow the project pins (3.17.2): 1.62.0.post6, the
# newest, requires mlflow-skinny<=3.15.0, and 1.62.0.post5 <=3.13.0 (their PyPI metadata). Installing it
# would downgrade MLflow in one image only, so no image carries it, and a job fails at its first MLflow use
# with this message instead of MLflow's "no registered store" deep in a run.
AZUREML_TRACKING_MISSING = (
    "MLFLOW_TRACKING_URI is {uri!r}, an Azure ML workspace URI, which needs the azureml-mlflow plugin; it is "
    "not installed, because every azureml-mlflow release (newest 1.62.0.post6: mlflow-skinny<=3.15.0) conflicts "
    "with the mlflow 3.17.2 that tuneline pins. Point MLFLOW_TRACKING_URI at an MLflow tracking server instead "
    "(for example the one k8s/base/mlflow deploys), or install an azureml-mlflow that supports mlflow 3.17.")


class TrackingStoreMissing(RuntimeError):
    """The tracking URI names a store whose MLflow plugin is not installed."""


def is_project_root(folder: Path) -> bool:
    """A project's root holds its components (`components/`), its state (`.tuneline/`) or its repository (`.git`)."""
    return (folder / "components").is_dir() or (folder / HOME_FOLDER).is_dir() or (folder / ".git").exists()


def project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above `start` (default: the current folder) that `is_project_root`; None when
    there is none."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if is_project_root(folder):
            return folder
    return None


def state_home(explicit: str | Path | None = None, start: Path | None = None) -> Path:
    """The state folder every command uses: `explicit` (a --home flag), else $TUNELINE_HOME, else `.tuneline`
    in the project of the current folder (`project_root`), else in the current folder."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    if os.environ.get("TUNELINE_HOME"):
        return Path(os.environ["TUNELINE_HOME"]).expanduser().absolute()
    here = (start or Path.cwd()).absolute()
    return (project_root(here) or here) / HOME_FOLDER


def home(root: Path | None = None) -> Path:
    """The state folder: $TUNELINE_HOME, else `.tuneline` in `root`; without `root`, `state_home()`."""
    if root is None and not os.environ.get("TUNELINE_HOME"):
        return state_home()
    return Path(os.environ.get("TUNELINE_HOME") or (root or Path.cwd()) / HOME_FOLDER)


def tracking_uri(home_dir: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else the SQLite store in the state folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{((home_dir or home()) / 'mlflow.db').absolute()}"


def check_tracking_store(uri: str) -> None:
    """Refuse an `azureml://` tracking URI when no installed plugin serves it."""
    if uri.split(":", 1)[0].lower() == "azureml":
        if not any(ep.name == "azureml" for ep in entry_points(group="mlflow.tracking_store")):
            raise TrackingStoreMissing(AZUREML_TRACKING_MISSING.format(uri=uri.split("?", 1)[0][:80]))


def pipeline_run_id() -> str:
    """The id of the pipeline run this step belongs to ('' outside a pipeline)."""
    return os.environ.get("TUNELINE_RUN_ID") or os.environ.get("AZUREML_ROOT_RUN_ID") or ""


def serve_state_dir(home_dir: Path | None = None) -> Path:
    """Where the local Triton servers and the proxy keep their state (state.json, token, logs)."""
    return Path(os.environ.get("TUNELINE_SERVE_STATE") or (home_dir or home()) / "serve")


# Where `make serve-venv` builds the serving venv: beside the tuneline package's checkout.
INSTALL_SERVE_VENV = Path(__file__).resolve().parents[1] / HOME_FOLDER / "serve-venv"


def serve_venv() -> Path:
    """The separate venv that holds the bundled tritonserver (it needs numpy<2): $TUNELINE_SERVE_VENV, else
    `.tuneline/serve-venv` here, else the one `make serve-venv` built in tuneline's own checkout, so a project of
    one's own (`tuneline init`) serves without building a second one."""
    if os.environ.get("TUNELINE_SERVE_VENV"):
        return Path(os.environ["TUNELINE_SERVE_VENV"])
    local = Path(HOME_FOLDER) / "serve-venv"
    if not local.exists() and (INSTALL_SERVE_VENV / "bin" / "python").exists():
        return INSTALL_SERVE_VENV
    return local


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0] or ".")


def use_tracking(home_dir: Path | None = None) -> str:
    """Point this process's MLflow (and the subprocesses it starts) at `tracking_uri()`; returns the URI."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(home_dir)
    check_tracking_store(uri)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def mlflow_client(home_dir: Path | None = None):
    """An `MlflowClient` on the tracking store, its tracking and registry tables created under a lock."""
    from mlflow.tracking import MlflowClient

    uri = use_tracking(home_dir)
    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    with open(db.with_name(db.name + ".init.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri=uri)  # creates and migrates the tracking tables
            client.search_registered_models(max_results=1)  # the registry store initialises lazily
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return client
