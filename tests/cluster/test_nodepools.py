"""Node pools: the az script for all three pools, the ASO manifests (fresh and schema-valid), spec errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tuneline.cluster import nodepools
from tuneline.cluster.schemas import AGENT_POOL

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "k8s" / "nodepools.yaml"


@pytest.fixture(scope="module")
def spec() -> nodepools.NodePoolSpec:
    return nodepools.load_spec(SPEC)


def test_dry_run_prints_commands_for_all_three_pools(spec, capsys) -> None:
    assert nodepools.main(["--spec", str(SPEC), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for pool in ("system", "gpu", "gpuspot"):
        assert f"az aks nodepool show --resource-group tuneline-rg --cluster-name tuneline-aks --name {pool} " in out
    adds = [line.strip() for line in out.splitlines() if "az aks nodepool add" in line]
    assert len(adds) == 3
    spot = next(a for a in adds if "--name gpuspot" in a)
    for flag in ("--priority Spot", "--eviction-policy Delete", "--spot-max-price -1", "--min-count 0",
                 "--node-count 0", "--node-taints sku=gpu:NoSchedule", "--enable-cluster-autoscaler",
                 "--node-vm-size Standard_NC24ads_A100_v4", "--kubernetes-version 1.36"):
        assert flag in spot
    assert "--gpu-driver" not in spot  # gpuStack aks-driver: AKS installs the driver
    gpu = next(a for a in adds if "--name gpu " in a)
    assert "--node-taints sku=gpu:NoSchedule" in gpu and "--priority" not in gpu
    assert out.count("--update-cluster-autoscaler") == 3  # idempotent: existing pools are updated
    # an update replaces the whole label and taint set: AKS's own spot label and taint are re-declared
    spot_update = next(line for line in out.splitlines() if "update" in line and "--name gpuspot" in line)
    assert "--node-taints sku=gpu:NoSchedule,kubernetes.azure.com/scalesetpriority=spot:NoSchedule" in spot_update
    assert "--labels kubernetes.azure.com/scalesetpriority=spot tuneline.dev/accelerator=nvidia-a100" in spot_update
    gpu_update = next(line for line in out.splitlines() if "update" in line and "--name gpu " in line)
    assert "scalesetpriority" not in gpu_update


def test_script_is_valid_bash(spec) -> None:
    result = subprocess.run(["bash", "-n"], input=nodepools.script(spec), text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_apply_adds_missing_and_updates_existing(spec, monkeypatch) -> None:
    calls: list[list[str]] = []

    def fake_az(cmd, **kwargs):  # stands in for the Azure API, which cannot be reached from tests
        calls.append(cmd)
        exists = cmd[3] == "show" and "system" in cmd
        return subprocess.CompletedProcess(cmd, 0 if exists or cmd[3] != "show" else 3,
                                           stdout="true\n" if exists else "", stderr="")

    monkeypatch.setattr(nodepools.shutil, "which", lambda _: "/usr/bin/az")
    nodepools.apply(spec, runner=fake_az)
    verbs = [(c[3], c[c.index("--name") + 1]) for c in calls]
    assert verbs == [("show", "system"), ("update", "system"), ("show", "gpu"), ("add", "gpu"),
                     ("show", "gpuspot"), ("add", "gpuspot")]


def test_aso_manifests_are_fresh_and_valid(spec) -> None:
    for name, text in nodepools.aso_files(spec).items():
        committed = REPO / "k8s" / "nodepools" / "aso" / name
        assert committed.read_text() == text, f"{committed} is stale: python -m tuneline.cluster.nodepools --aso-out"
    pools = nodepools.aso_resources(spec)
    for obj in pools:
        jsonschema.validate(obj, AGENT_POOL)
    spot = next(p for p in pools if p["spec"]["azureName"] == "gpuspot")["spec"]
    assert spot["scaleSetPriority"] == "Spot" and spot["spotMaxPrice"] == -1 and spot["minCount"] == 0
    assert spot["count"] == 0  # created empty, or ARM creates a GPU node on day one
    assert spot["nodeLabels"]["kubernetes.azure.com/scalesetpriority"] == "spot"
    assert "kubernetes.azure.com/scalesetpriority=spot:NoSchedule" in spot["nodeTaints"]
    system = next(p for p in pools if p["spec"]["azureName"] == "system")["spec"]
    assert "count" not in system and "scalesetpriority" not in str(system)


def test_priority_expander_is_fresh_and_puts_spot_first(spec) -> None:
    for name, text in nodepools.expander_files(spec).items():
        committed = REPO / "k8s" / "addons" / "autoscaler" / name
        assert committed.read_text() == text, (
            f"{committed} is stale: python -m tuneline.cluster.nodepools --expander-out")
    priorities = yaml.safe_load(nodepools.expander_configmap(spec)["data"]["priorities"])
    assert priorities == {50: ["^aks-gpuspot-[0-9]+-vmss$"], 10: ["^aks-gpu-[0-9]+-vmss$"], 1: [".*"]}


def test_gpu_operator_stack_skips_the_driver_and_refuses_aso(spec) -> None:
    operator = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"gpuStack": "gpu-operator"})})
    adds = [nodepools.add_command(operator, p) for p in operator.pools]
    assert [("--gpu-driver" in a) for a in adds] == [False, True, True]
    assert adds[1][adds[1].index("--gpu-driver") + 1] == "None"
    with pytest.raises(ValueError, match="cannot skip the GPU driver install"):
        nodepools.aso_resources(operator)


@pytest.mark.parametrize("change,message", [
    ({"evictionPolicy": None}, "a Spot pool needs evictionPolicy and spotMaxPrice"),
    ({"name": "GPU_pool"}, "pools.2.name"),
    ({"autoscale": {"min": 3, "max": 1}}, "autoscale.min (3) is above autoscale.max (1)"),
    ({"taints": ["sku=gpu"]}, "is not key[=value]:NoSchedule"),
    ({"vmSzie": "x"}, "pools.2.vmSzie: Extra inputs are not permitted"),
    ({"count": 1, "autoscale": {"min": 0, "max": 4}}, "create GPU pools with count 0"),
])
def test_bad_spec_names_file_and_field(tmp_path: Path, change: dict, message: str) -> None:
    data = yaml.safe_load(SPEC.read_text())
    data["pools"][2].update(change)
    data["pools"][2] = {k: v for k, v in data["pools"][2].items() if v is not None}
    bad = tmp_path / "pools.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="pools.yaml: ") as info:
        nodepools.load_spec(bad)
    assert message in str(info.value)
