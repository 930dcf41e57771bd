"""Where tuneline keeps its state, decided in one place.

- home (runs, cache, models, MLflow store, serving state): `--home`, else `$TUNELINE_HOME`, else `.tuneline/` in
  the project of the current folder: the nearest folder at or above it that holds `.tuneline/`, `components/`
  or `.git`, else the current folder itself (`state_home`). Every command finds it the same way, so
  `tuneline runs list` run where `tuneline run` was sees its runs, whichever folder the pipeline file is in;
- tracking URI: `$MLFLOW_TRACKING_URI`, else a SQLite store `<home>/mlflow.db` (a `mlflow server` works
  unchanged when the variable is set; the `azureml://` URI Azure ML injects into every job is turned into the
  workspace's https MLflow endpoint, authenticated by the job's injected token, which a thread renews before
  it expires: see `azureml_rest_uri`);
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
import re
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

HOME_FOLDER = ".tuneline"
# MLflow 3 reports usage telemetry unless this variable is set; tuneline turns it off in every process it runs,
# starts or compiles a job for. A value the caller set already wins (`disable_mlflow_telemetry`).
TELEMETRY_VAR = "MLFLOW_DISABLE_TELEMETRY"
TELEMETRY_OFF = {TELEMETRY_VAR: "true"}
# The image a step hands to a platform to run (its component.yaml's `deploys_image`), resolved from the same image
# plan, registry, tag or lock, as the step's own image; every target sets it, the step reads it.
DEPLOY_IMAGE_VAR = "TUNELINE_DEPLOY_IMAGE"
# Names more than one layer writes, each declared once here.
# AKS labels and taints every node of a spot pool kubernetes.azure.com/scalesetpriority=spot:NoSchedule
# (https://learn.microsoft.com/azure/aks/spot-node-pool); compile, the cluster policy, the node-pool manifests and
# the KServe manifests all select or tolerate it.
SPOT_LABEL = "kubernetes.azure.com/scalesetpriority"
SPOT_VALUE = "spot"
SPOT_TAINT = f"{SPOT_LABEL}={SPOT_VALUE}:NoSchedule"
# The Azure ML datastore a compiled pipeline writes its outputs to (`settings.default_datastore`), and so where a
# step that registers its own output finds it (tuneline/llm/workspace_files.py); every workspace has it.
AZUREML_DEFAULT_DATASTORE = "workspaceblobstore"
# Gated Hugging Face Hub models need a token in HF_TOKEN (what huggingface_hub reads) in the steps that load a model.
# Kubeflow Pipelines puts it there from a Secret (HF_SECRET_FLAG); Azure ML names a Key Vault secret
# (AZUREML_HF_TOKEN_SECRET_FLAG) whose URI the compiled steps carry in HF_TOKEN_SECRET_VAR, and the step reads the
# secret itself (tuneline/llm/ml/hubaccess.py). The flags are declared with these names; errors quote them.
HF_TOKEN_VAR = "HF_TOKEN"
HF_SECRET_FLAG = "--hf-secret"
AZUREML_HF_TOKEN_SECRET_FLAG = "--azureml-hf-token-secret"
HF_TOKEN_SECRET_VAR = "TUNELINE_HF_TOKEN_SECRET"
# A Key Vault secret identifier, with or without its version: https://<vault>.vault.azure.net/secrets/<name>[/<v>]
KEY_VAULT_SECRET_URI = re.compile(r"^https://(?P<vault>[a-z0-9-]+)\.(?P<suffix>vault\.[a-z0-9.-]+)/secrets/"
                                  r"(?P<name>[A-Za-z0-9-]+)(?:/(?P<version>[A-Za-z0-9]+))?/?$", re.I)
# Where compiled Kubernetes steps mount the shared checkpoint volume.
CHECKPOINT_MOUNT = "/mnt/checkpoints"
# The metric a gate, a promotion rule or a drift check compares when nothing names one. The components that take a
# gate metric declare their own default in component.yaml; a test keeps those equal to this.
DEFAULT_GATE_METRIC = "exact_match"
# Azure ML sets MLFLOW_TRACKING_URI to the workspace's azureml:// URI in every job, overriding the job's own value,
# with MLFLOW_TRACKING_TOKEN (the job's token), MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID/NAME beside it
# (https://learn.microsoft.com/azure/machine-learning/how-to-use-mlflow-configure-tracking). Only the
# azureml-mlflow plugin serves that scheme, and every release of it caps mlflow-skinny below the mlflow the
# project pins (1.62.0.post6, the newest: mlflow-skinny<=3.15.0). What the plugin does with the URI in a job is
# plain MLflow REST (azureml-mlflow 1.62.0.post6, azureml/mlflow/_internal/utils.py
# `get_service_context_from_tracking_url_mlflow_env_vars` and _store/azureml_reststore.py
# `get_host_credentials`): host `https://<netloc of the URI>`, path `/mlflow/v2.0` (for MLflow 2 and 3) plus the
# workspace scope `/subscriptions/<s>/resourceGroups/<g>/providers/Microsoft.MachineLearningServices/workspaces/
# <w>`, and `Authorization: Bearer $MLFLOW_TRACKING_TOKEN`. MLflow's own RestStore does exactly that for an
# https URI with MLFLOW_TRACKING_TOKEN set, so the URI is rewritten and no plugin is needed.
AZUREML_API_PATH = "/mlflow/v2.0"
_AZUREML_SCOPE = re.compile(r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/"
                            r"Microsoft\.MachineLearningServices/workspaces/([^/?#]+)", re.I)
AZUREML_TOKEN_VARS = ("MLFLOW_TRACKING_TOKEN", "AZUREML_RUN_TOKEN")  # the job's token, in the plugin's order


class TrackingStoreMissing(RuntimeError):
    """The tracking URI names a store that cannot be reached as written (bad form, no credentials)."""


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
    """$MLFLOW_TRACKING_URI (an Azure ML `azureml://` one as its https endpoint), else the SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and is_azureml_uri(uri) and not _azureml_plugin():
        return azureml_rest_uri(uri)
    return uri or f"sqlite:///{((home_dir or home()) / 'mlflow.db').absolute()}"


def is_azureml_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].lower() == "azureml"


def _azureml_plugin() -> bool:
    """An installed azureml-mlflow serves the scheme itself (and its artifact store); let it."""
    return any(ep.name == "azureml" for ep in entry_points(group="mlflow.tracking_store"))


def azureml_rest_uri(uri: str) -> str:
    """`azureml://<host>/mlflow/v1.0/subscriptions/…/workspaces/<w>` -> `https://<host>/mlflow/v2.0/subscriptions/
    …/workspaces/<w>`, with the job's token in MLFLOW_TRACKING_TOKEN (MLflow sends it as a bearer token)."""
    parsed = urlsplit(uri)
    scope = _AZUREML_SCOPE.search(parsed.path)
    shown = uri.split("?", 1)[0][:200]
    if not parsed.netloc or scope is None:
        raise TrackingStoreMissing(
            f"MLFLOW_TRACKING_URI {shown!r} is not an Azure ML workspace URI: expected azureml://<host>/mlflow/"
            f"v1.0/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.MachineLearningServices/"
            f"workspaces/<name>")
    token = next((os.environ[k] for k in AZUREML_TOKEN_VARS if os.environ.get(k)), None)
    if token is None:
        raise TrackingStoreMissing(
            f"MLFLOW_TRACKING_URI is the Azure ML workspace URI {shown!r}, but none of "
            f"{', '.join(AZUREML_TOKEN_VARS)} holds the job's token that its MLflow endpoint needs (Azure ML "
            f"injects them into every job; outside a job, use the https endpoint and a token of your own)")
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    _start_token_refresh(parsed.netloc, scope.group(0))
    return f"https://{parsed.netloc}{AZUREML_API_PATH}{scope.group(0)}"


# The job's token expires (AZUREML_RUN_TOKEN_EXPIRY, epoch seconds); azureml-mlflow asks the run-history service
# for a new one this many seconds before (azureml-mlflow 1.62.0.post6, _common/_authentication/
# azureml_token_authentication.py `EXPIRATION_THRESHOLD_IN_SECONDS`, `_update_auth`), with the current token, at
# GET /history/v1.0<workspace scope>/experimentids/<experiment id>/runs/<run id>/token ({"token",
# "expiryTimeUtc"}; _restclient/token/operations/_runs_operations.py). MLflow reads MLFLOW_TRACKING_TOKEN at
# every request, so replacing the variable is enough.
TOKEN_REFRESH_MARGIN_S = 95
TOKEN_RETRY_S = 30
_refreshing: set[str] = set()


def _token_expiry() -> float | None:
    value = os.environ.get("AZUREML_RUN_TOKEN_EXPIRY")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def refresh_token_once(host: str, scope: str) -> float:
    """Ask the workspace for a new job token and put it where MLflow reads it; returns its expiry (epoch s)."""
    import json
    import urllib.request
    from datetime import datetime

    url = (f"https://{host}/history/v1.0{scope}/experimentids/{os.environ['MLFLOW_EXPERIMENT_ID']}/runs/"
           f"{os.environ['AZUREML_RUN_ID']}/token")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}",
                                                   "Accept": "application/json"})
    context = None
    if os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):  # the same trust MLflow's requests use
        import ssl

        context = ssl.create_default_context(cafile=os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    with urllib.request.urlopen(request, timeout=30, context=context) as reply:
        body = json.loads(reply.read())
    expiry = datetime.fromisoformat(body["expiryTimeUtc"].replace("Z", "+00:00")).timestamp()
    os.environ["MLFLOW_TRACKING_TOKEN"] = body["token"]
    os.environ["AZUREML_RUN_TOKEN_EXPIRY"] = str(int(expiry))
    return expiry


def _start_token_refresh(host: str, scope: str) -> None:
    """A daemon thread that renews the job's token before it expires, once per process and workspace. Without
    the variables naming the job's run and the token's expiry (outside a job) there is nothing to renew."""
    import sys
    import threading
    import time

    if host in _refreshing or _token_expiry() is None or not os.environ.get("MLFLOW_EXPERIMENT_ID") \
            or not os.environ.get("AZUREML_RUN_ID"):
        return
    _refreshing.add(host)

    def renew() -> None:
        while True:
            expiry = _token_expiry() or time.time() + TOKEN_RETRY_S + TOKEN_REFRESH_MARGIN_S
            time.sleep(max(0.0, expiry - TOKEN_REFRESH_MARGIN_S - time.time()))
            try:
                refresh_token_once(host, scope)
            except Exception as exc:  # noqa: BLE001 - keep the old token and try again; MLflow will say 401
                print(f"tracking: the job's token was not renewed ({exc}); retrying in {TOKEN_RETRY_S}s",
                      file=sys.stderr)
                time.sleep(TOKEN_RETRY_S)

    threading.Thread(target=renew, name="azureml-token-refresh", daemon=True).start()


def is_workspace_endpoint(uri: str) -> bool:
    """An Azure ML workspace's MLflow endpoint: its azureml:// URI, or the https one `azureml_rest_uri` makes."""
    if is_azureml_uri(uri):
        return True
    parsed = urlsplit(uri)
    return parsed.scheme == "https" and parsed.path.startswith(AZUREML_API_PATH + "/") and \
        _AZUREML_SCOPE.search(parsed.path) is not None


def check_tracking_store(uri: str) -> None:
    """Refuse a tracking URI MLflow cannot open as written; today only a malformed `azureml://` one."""
    if is_azureml_uri(uri) and not _azureml_plugin():
        azureml_rest_uri(uri)


def pipeline_run_id() -> str:
    """The id of the pipeline run this step belongs to ('' outside a pipeline)."""
    return os.environ.get("TUNELINE_RUN_ID") or os.environ.get("AZUREML_ROOT_RUN_ID") or ""


def serve_state_dir(home_dir: Path | None = None) -> Path:
    """Where the local Triton servers and the proxy keep their state (state.json, token, logs)."""
    return Path(os.environ.get("TUNELINE_SERVE_STATE") or (home_dir or home()) / "serve")


# The feedback loop's request log: the proxy writes the file this variable names; `tuneline feedback` reads it,
# defaulting to REQUEST_LOG_FILE in the serve state folder.
REQUEST_LOG_ENV = "TUNELINE_REQUEST_LOG"
REQUEST_LOG_FILE = "requests.jsonl"


def default_request_log(home_dir: Path | None = None) -> Path:
    """The request log `tuneline feedback` reads when neither `--log` nor $TUNELINE_REQUEST_LOG names one."""
    return serve_state_dir(home_dir) / REQUEST_LOG_FILE


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


def disable_mlflow_telemetry() -> None:
    """Turn MLflow's telemetry off in this process and the ones it starts, unless the environment already decided."""
    os.environ.setdefault(TELEMETRY_VAR, TELEMETRY_OFF[TELEMETRY_VAR])


def use_tracking(home_dir: Path | None = None) -> str:
    """Point this process's MLflow (and the subprocesses it starts) at `tracking_uri()`; returns the URI."""
    disable_mlflow_telemetry()
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
