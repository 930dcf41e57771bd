"""docs/aks.md works as written: every shell command on the page, in order, is checked against what k8s/ renders
(the prod overlay the page applies, and the one-off jobs it applies): namespaces, object names, ServiceAccounts and
their federated credentials, the roles each identity gets and what its pods read, Key Vault secret names, Secrets,
Blob containers, subnets and the cluster's access flags. Azure and a Kubernetes API server cannot run here; the
boundary is the command line each would receive."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.cluster import REPO, of
from tests.cluster.docs_commands import Command, all_argvs, commands, expand, option, variables_used
from tuneline.cluster import policy
from tuneline.cluster.render import render
from tuneline.serving.deploy import kserve
from tuneline.serving.deploy.policy import RolloutPolicy

DOCS = REPO / "docs" / "aks.md"
# Objects the page uses that other installers create, each named by the step that installs them.
EXTERNAL = {
    ("kubeflow", "svc", "minio-service"): "Kubeflow Pipelines (step 10)",
    ("kubeflow", "secret", "mlpipeline-minio-artifact"): "Kubeflow Pipelines (step 10)",
    ("istio-system", "svc", "istio-ingressgateway"): "KServe's Istio (step 13)",
}
KINDS = {"svc": "Service", "service": "Service", "deployment": "Deployment", "daemonset": "DaemonSet",
         "job": "Job", "cronjob": "CronJob", "secret": "Secret", "inferenceservice": "InferenceService"}
BUILT_IN_PRIORITY_CLASSES = ("system-node-critical", "system-cluster-critical")  # every cluster has them
ACCESS_FLAGS = ("--enable-aad", "--enable-azure-rbac", "--disable-local-accounts", "--enable-oidc-issuer",
                "--enable-workload-identity")


@pytest.fixture(scope="module")
def cmds() -> list[Command]:
    return commands(DOCS.read_text())


@pytest.fixture(scope="module")
def env(cmds) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in cmds:
        out.update(c.assigns)
    return out


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    found = [r.obj for r in render(REPO / "k8s" / "overlays" / "prod")]
    return found + [r.obj for r in render(REPO / "k8s" / "jobs" / "gpu-smoke")]


def _az(cmds: list[Command], *words: str) -> list[tuple[int, Command]]:
    return [(i, c) for i, c in enumerate(cmds) if c.argv[:len(words)] == list(words)]


def _pods(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(object, pod spec) of every workload."""
    return [(o, policy.pod_spec(o)) for o in objects if policy.pod_spec(o) is not None]


def _pod_labels(o: dict) -> dict[str, str]:
    spec = o["spec"]
    return (((spec.get("jobTemplate") or {}).get("spec", spec)).get("template") or {}).get("metadata", {}).get(
        "labels", {})


def _served(cmds: list[Command]) -> list[dict]:
    """What the serving step's `kubectl apply -f` applies: the deploy step's manifests for its command line."""
    out = []
    for c in cmds:
        if c.argv[:3] == [".venv/bin/python", "-m", "components.deploy"] and option(c.argv, "--target") == "kserve":
            name = option(c.argv, "--serving-name") or option(c.argv, "--model-uri").split("/")[1]
            options = kserve.KServeOptions(
                name=name.lower(), namespace=option(c.argv, "--namespace") or "tuneline",
                storage_uri=option(c.argv, "--storage-uri"), api=option(c.argv, "--kserve-api") or "v2",
                min_replicas=int(option(c.argv, "--min-replicas") or 1),
                max_replicas=int(option(c.argv, "--max-replicas") or 3))
            out += kserve.manifests(options, RolloutPolicy(), option(c.argv, "--model-uri"), 1)
    return out


def test_every_variable_is_set_before_it_is_used(cmds) -> None:
    known: set[str] = set()
    missing = []
    for c in cmds:
        loops = set(re.findall(r"for (\w+) in", c.line))
        used = variables_used(" ".join(c.argv) + " " + " ".join(c.assigns.values())) - known - loops
        missing += [f"${v} in: {c.line.strip()[:100]}" for v in sorted(used)]
        known |= set(c.assigns)
    assert missing == []


def test_kubectl_names_exist_where_the_page_uses_them(cmds, objects) -> None:
    served = _served(cmds)
    rendered = {(o["metadata"].get("namespace"), o["kind"], o["metadata"]["name"]) for o in objects + served}
    namespaces = {o["metadata"]["name"] for o in of(objects, "Namespace")} | \
                 {o["metadata"].get("namespace") for o in objects if o["metadata"].get("namespace")}
    created: set[tuple[str, str, str]] = set()
    problems = []
    for _, argv in all_argvs(cmds):
        if argv[0] != "kubectl":
            continue
        ns = option(argv, "-n", "--namespace")
        if ns and ns not in namespaces and not any(k[0] == ns for k in EXTERNAL):
            problems.append(f"namespace {ns} is rendered by nothing in k8s/: {' '.join(argv)}")
        if "create" in argv and ns:
            words = [w for w in argv if not w.startswith("-")]
            kind = words[words.index("create") + 1]
            name = words[words.index("create") + 2] if kind != "secret" else words[words.index("create") + 3]
            created.add((ns, KINDS.get(kind, kind), name))
        refs = [w.split("/", 1) for w in argv if re.match(r"^[a-z]+/[a-z0-9-]+$", w) and w.split("/")[0] in KINDS]
        refs += [w.removeprefix("--from=").split("/", 1) for w in argv if w.startswith("--from=")]
        words = [w for w in argv if not w.startswith("-") and w != ns]
        if "get" in words and len(words) > words.index("get") + 2 and words[words.index("get") + 1] in KINDS:
            refs.append([words[words.index("get") + 1], words[words.index("get") + 2]])
        for kind, name in refs:
            key = (ns or "default", KINDS.get(kind, kind), name)
            if key not in rendered and key not in created and (ns, kind, name) not in EXTERNAL:
                problems.append(f"{kind}/{name} in namespace {ns}: nothing in k8s/ or earlier on the page creates it")
        if argv[1:3] == ["apply", "-k"] and not (REPO / argv[3] / "kustomization.yaml").is_file():
            problems.append(f"kubectl apply -k {argv[3]}: no kustomization there")
    assert problems == []


def _federation_problems(cmds: list[Command], objects: list[dict]) -> list[str]:
    federated: dict[str, list[str]] = {}
    for _, c in _az(cmds, "az", "identity", "federated-credential", "create"):
        federated.setdefault(option(c.argv, "--identity-name"), []).append(option(c.argv, "--subject"))
    annotated = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in of(objects, "ServiceAccount")
                 if "azure.workload.identity/client-id" in (o["metadata"].get("annotations") or {})}
    problems, subjects = [], []
    for identity, subs in federated.items():
        if len(subs) != 1:
            problems.append(f"{identity} is federated with {len(subs)} ServiceAccounts: "
                            "one identity per ServiceAccount")
        for sub in subs:
            match = re.fullmatch(r"system:serviceaccount:([a-z0-9-]+):([a-z0-9-]+)", sub)
            if not match:
                problems.append(f"{identity}: subject {sub} names no ServiceAccount literally")
                continue
            subjects.append(match.groups())
            if match.groups() not in annotated:
                problems.append(f"{identity}: {sub} has no ServiceAccount with a workload identity client-id in k8s/")
    if len(set(subjects)) != len(subjects):
        problems.append("two identities are federated with one ServiceAccount")
    problems += [f"ServiceAccount {ns}/{sa} has a client-id but no federated credential"
                 for ns, sa in sorted(annotated - set(subjects))]
    for o, spec in _pods(objects):
        key = (o["metadata"]["namespace"], spec.get("serviceAccountName", "default"))
        if key in annotated and _pod_labels(o).get("azure.workload.identity/use") != "true":
            problems.append(f"{o['kind']}/{o['metadata']['name']} runs as {key[1]} without azure.workload.identity/use")
    return problems if federated else ["the page federates no identity"]


def test_federated_credentials_name_the_service_accounts_that_use_them(cmds, objects) -> None:
    assert _federation_problems(cmds, objects) == []


def _grants(cmds: list[Command], env: dict[str, str]) -> dict[str, list[tuple[int, str, str]]]:
    """Who gets which role where: identity name (or "kubelet", "me") -> [(position, role, expanded scope)]."""
    owners = {}
    for name, value in env.items():
        found = re.search(r"az identity show .*-n (\S+) --query principalId", value)
        owners[name] = found.group(1) if found else ("kubelet" if "kubeletidentity" in value else
                                                     "me" if "signed-in-user" in value else name)
    out: dict[str, list[tuple[int, str, str]]] = {}
    for i, c in _az(cmds, "az", "role", "assignment", "create"):
        who = owners.get(option(c.argv, "--assignee-object-id").strip("${}"), "?")
        out.setdefault(who, []).append((i, option(c.argv, "--role"), expand(option(c.argv, "--scope"), env)))
    return out


def _secret_provider_classes_read_by(objects: list[dict], namespace: str, account: str) -> set[str]:
    classes = set()
    for o, spec in _pods(objects):
        if o["metadata"].get("namespace") == namespace and spec.get("serviceAccountName") == account:
            classes |= {v["csi"]["volumeAttributes"]["secretProviderClass"] for v in spec.get("volumes") or []
                        if (v.get("csi") or {}).get("driver") == "secrets-store.csi.k8s.io"}
    objects_read = set()
    for spc in of(objects, "SecretProviderClass", namespace=namespace):
        if spc["metadata"]["name"] in classes:
            objects_read |= set(re.findall(r"objectName:\s*(\S+)", spc["spec"]["parameters"]["objects"]))
    return objects_read


def _containers_written_by(objects: list[dict], namespace: str, account: str) -> set[str]:
    found = set()
    for o, spec in _pods(objects):
        if o["metadata"].get("namespace") == namespace and spec.get("serviceAccountName") == account:
            for c in spec["containers"]:
                found |= {m for e in c.get("env") or [] for m in re.findall(r"wasbs://([a-z0-9-]+)@",
                                                                           str(e.get("value", "")))}
    return found


def test_each_identity_may_read_exactly_what_its_pods_read(cmds, env, objects) -> None:
    grants = _grants(cmds, env)
    federated = {option(c.argv, "--identity-name"): option(c.argv, "--subject").split(":")[2:]
                 for _, c in _az(cmds, "az", "identity", "federated-credential", "create")}
    for identity, (namespace, account) in federated.items():
        given = grants.get(identity, [])
        secrets = {s.rsplit("/secrets/", 1)[1] for _, role, s in given if role == "Key Vault Secrets User"}
        containers = {s.rsplit("/containers/", 1)[1] for _, role, s in given if "Storage Blob" in role}
        assert secrets == _secret_provider_classes_read_by(objects, namespace, account), identity
        assert containers == _containers_written_by(objects, namespace, account), identity
        wide = [s for _, _, s in given if not re.search(r"/(secrets|containers)/[a-z0-9-]+$", s)]
        assert wide == [], f"{identity} is granted a whole vault or account: {wide}"
    blob_volumes = {v["spec"]["csi"]["volumeAttributes"]["containerName"] for v in of(objects, "PersistentVolume")
                    if v["spec"]["csi"]["driver"] == "blob.csi.azure.com"}
    kubelet = {s.rsplit("/containers/", 1)[1] for _, role, s in grants["kubelet"] if role == "Storage Blob Data Reader"}
    assert kubelet == blob_volumes and len(grants["kubelet"]) == len(kubelet)


def test_roles_on_secrets_come_after_the_secrets(cmds, env) -> None:
    written = {option(c.argv, "--name"): i for i, c in _az(cmds, "az", "keyvault", "secret", "set")}
    for who, given in _grants(cmds, env).items():
        for position, _, scope in given:
            if "/secrets/" in scope:
                name = scope.rsplit("/secrets/", 1)[1]
                assert written.get(name, len(cmds)) < position, f"{who}: {name} is granted before it exists"


def test_every_secret_a_pod_reads_is_created_and_outlives_no_pod(cmds, objects) -> None:
    docs_secrets = set()
    for _, argv in all_argvs(cmds):
        if argv[0] == "kubectl" and argv[argv.index("create") + 1:argv.index("create") + 2] == ["secret"] \
                if "create" in argv else False:
            words = [w for w in argv if not w.startswith("-")]
            docs_secrets.add((option(argv, "-n", "--namespace"), words[words.index("secret") + 2]))
    vault = {option(c.argv, "--name") for _, c in _az(cmds, "az", "keyvault", "secret", "set")}
    for spc in of(objects, "SecretProviderClass"):
        read = set(re.findall(r"objectName:\s*(\S+)", spc["spec"]["parameters"]["objects"]))
        assert read <= vault, f"SecretProviderClass {spc['metadata']['name']} reads {read - vault}, never written"
    problems = []
    for o, spec in _pods(objects):
        ns = o["metadata"]["namespace"]
        mounted = {v["csi"]["volumeAttributes"]["secretProviderClass"] for v in spec.get("volumes") or []
                   if (v.get("csi") or {}).get("driver") == "secrets-store.csi.k8s.io"}
        mirrored = {so["secretName"] for spc in of(objects, "SecretProviderClass", namespace=ns)
                    if spc["metadata"]["name"] in mounted for so in spc["spec"].get("secretObjects") or []}
        names = {e["valueFrom"]["secretKeyRef"]["name"] for c in spec["containers"] for e in c.get("env") or []
                 if "secretKeyRef" in (e.get("valueFrom") or {})}
        names |= {v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}
        for name in names:
            if name not in mirrored and (ns, name) not in docs_secrets and not of(objects, "Secret", name, ns):
                problems.append(f"{o['kind']}/{o['metadata']['name']} reads Secret {name} that no manifest, "
                                f"own SecretProviderClass mount or docs command creates")
    assert problems == []


def test_blob_containers_exist_and_models_go_where_the_predictor_mounts(cmds, objects) -> None:
    created = {option(c.argv, "--name") for _, c in _az(cmds, "az", "storage", "container", "create")}
    volumes = {v["metadata"]["name"]: v["spec"]["csi"]["volumeAttributes"] for v in of(objects, "PersistentVolume")}
    assert {a["containerName"] for a in volumes.values()} <= created
    assert {"mlflow"} <= created  # MLflow's wasbs:// destination
    isvc = [d for d in _served(cmds) if d["kind"] == "InferenceService"]
    uploads = _az(cmds, "az", "storage", "blob", "upload-batch")
    assert isvc and uploads
    claim, _, path = isvc[0]["spec"]["predictor"]["model"]["storageUri"].removeprefix("pvc://").partition("/")
    pvc = of(objects, "PersistentVolumeClaim", claim, isvc[0]["metadata"]["namespace"])
    assert pvc, f"the InferenceService mounts PVC {claim}, which k8s/ does not create"
    upload = uploads[0][1].argv
    assert option(upload, "--destination") == volumes[pvc[0]["spec"]["volumeName"]]["containerName"]
    assert option(upload, "--destination-path") == path


def test_subnets_match_prods_mlflow_egress(cmds, objects) -> None:
    subnets = {option(c.argv, "--name"): option(c.argv, "--address-prefixes")
               for _, c in _az(cmds, "az", "network", "vnet", "subnet", "create")}
    egress = of(objects, "NetworkPolicy", "mlflow-egress")[0]["spec"]["egress"]
    allowed = {(rule["ports"][0]["port"], peer["ipBlock"]["cidr"]) for rule in egress for peer in rule["to"]}
    assert allowed == {(5432, subnets["postgres"]), (443, subnets["endpoints"])}
    (_, postgres), = _az(cmds, "az", "postgres", "flexible-server", "create")
    assert option(postgres.argv, "--subnet") == "postgres"
    (_, endpoint), = _az(cmds, "az", "network", "private-endpoint", "create")
    assert option(endpoint.argv, "--subnet") == "endpoints" and option(endpoint.argv, "--group-id") == "blob"
    assert "SA_ID" in option(endpoint.argv, "--private-connection-resource-id")


def test_cluster_access_is_entra_id_only_and_not_public(cmds, env) -> None:
    (create_at, create), = _az(cmds, "az", "aks", "create")
    assert [f for f in ACCESS_FLAGS if f not in create.argv] == []
    assert option(create.argv, "--api-server-authorized-ip-ranges") or "--enable-private-cluster" in create.argv
    credentials = [i for i, c in _az(cmds, "az", "aks", "get-credentials")]
    assert credentials and not [c for _, c in _az(cmds, "az", "aks", "get-credentials") if "--admin" in c.argv]
    first_kubectl = min(i for i, c in enumerate(cmds) if c.argv[:1] == ["kubectl"])
    admin = [i for i, role, scope in _grants(cmds, env)["me"] if role.startswith("Azure Kubernetes Service RBAC")]
    assert admin and create_at < min(admin) < first_kubectl and min(credentials) < first_kubectl
    account = _az(cmds, "az", "storage", "account", "create")[0][1].argv
    assert option(account, "--allow-shared-key-access") == "false"


def test_identity_table_says_what_each_identity_may_do(cmds, env) -> None:
    text = DOCS.read_text()
    table = text.split("#### Identities", 1)[1].split("\n\n", 2)[1]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    assert cells[0] == ["Identity", "Acts for", "What it can do", "Why"]
    rows = cells[2:]
    assert rows and all(len(r) == 4 and all(r) for r in rows)
    by_name = {re.sub(r"`([^`]+)`.*", r"\1", r[0]) if r[0].startswith("`") else r[0]: r for r in rows}
    created = {option(c.argv, "--name") for _, c in _az(cmds, "az", "identity", "create")}
    assert created <= set(by_name), f"identities without a row: {created - set(by_name)}"
    for who, given in _grants(cmds, env).items():
        row = by_name.get(who) or (by_name[next(k for k in by_name if "kubelet" in k)] if who == "kubelet" else
                                   by_name[next(k for k in by_name if k.startswith("you"))] if who == "me" else None)
        assert row, who
        for _, role, scope in given:
            name = re.split(r"/(?:secrets|containers)/", scope)[-1] if re.search(r"/(secrets|containers)/", scope) \
                else None
            assert role in row[2], f"{who}: the table does not say it has {role}"
            assert name is None or f"`{name}`" in row[2], f"{who}: the table does not name {name}"
    pipeline = [r for r in rows if "tuneline-pipeline" in r[1]]
    assert pipeline and pipeline[0][2] == "no Azure role" and pipeline[0][3]


def test_the_page_as_it_was_fails(objects) -> None:
    # One identity federated with four ServiceAccounts, granted the whole vault: what these checks exist for.
    problems = _federation_problems(commands(_OLD_STEP_6), objects)
    assert "tuneline-workloads is federated with 4 ServiceAccounts: one identity per ServiceAccount" in problems
    assert any("kubeflow:tuneline-pipeline has no ServiceAccount" in p for p in problems)


_OLD_STEP_6 = """
```bash
for subject in tuneline:mlflow tuneline:tuneline-retrain tuneline:tuneline-pipeline kubeflow:tuneline-pipeline; do
  az identity federated-credential create --resource-group $RG --identity-name tuneline-workloads \\
    --name "${subject/:/-}" --issuer "$ISSUER" --subject "system:serviceaccount:$subject" \\
    --audiences api://AzureADTokenExchange
done
az role assignment create --assignee-object-id "$PRINCIPAL" --assignee-principal-type ServicePrincipal \\
  --role "Key Vault Secrets User" --scope "$(az keyvault show -n $KV --query id -o tsv)"
```
"""


def test_parser_reads_loops_heredocs_and_continuations(tmp_path: Path) -> None:
    page = ("```bash\nfor x in a b; do\n  echo $x \\\n    --flag\ndone\n"
            "if python - <<'PY'\nprint(1)\nPY\nthen\n  ok\nfi\n```\n")
    parsed = commands(page)
    assert [c.argv for c in parsed] == [["echo", "a", "--flag"], ["echo", "b", "--flag"], ["python", "-"], ["ok"]]
    assert parsed[2].heredoc == "print(1)"


def test_every_service_account_and_config_map_a_pod_names_is_rendered(cmds, objects) -> None:
    served = [d for d in _served(cmds) if d["kind"] == "InferenceService"]
    problems = []
    for o, spec in _pods(objects):
        ns = o["metadata"]["namespace"]
        account = spec.get("serviceAccountName")
        if account and not of(objects, "ServiceAccount", account, ns):
            problems.append(f"{o['kind']}/{o['metadata']['name']}: ServiceAccount {account} is not in {ns}")
        maps = {v["configMap"]["name"] for v in spec.get("volumes") or [] if "configMap" in v}
        maps |= {e["valueFrom"]["configMapKeyRef"]["name"] for c in spec["containers"] for e in c.get("env") or []
                 if "configMapKeyRef" in (e.get("valueFrom") or {})}
        problems += [f"{o['kind']}/{o['metadata']['name']}: ConfigMap {m} is not in {ns}" for m in sorted(maps)
                     if not of(objects, "ConfigMap", m, ns)]
        if spec.get("priorityClassName") not in (None, *BUILT_IN_PRIORITY_CLASSES) and \
                not of(objects, "PriorityClass", spec["priorityClassName"]):
            problems.append(f"{o['kind']}/{o['metadata']['name']}: no PriorityClass {spec['priorityClassName']}")
    for isvc in served:
        account = isvc["spec"]["predictor"].get("serviceAccountName")
        if account and not of(objects, "ServiceAccount", account, isvc["metadata"]["namespace"]):
            problems.append(f"InferenceService/{isvc['metadata']['name']}: ServiceAccount {account} is not rendered")
        if not of(objects, "PriorityClass", isvc["spec"]["predictor"]["priorityClassName"]):
            problems.append(f"InferenceService/{isvc['metadata']['name']}: no PriorityClass")
    assert served and problems == []
