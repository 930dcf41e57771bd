"""Every training method and every accelerate config the train component offers can start in the image its
component.yaml's `environment:` names: the packages each needs are pinned in that image's requirements, and every
pinned package's own requirements are met by the other pins (bitsandbytes and deepspeed need torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.cluster.test_environments import ENV_DIR, render

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "components" / "train"

# What each method imports beyond torch/transformers/accelerate. qlora: transformers' Bnb4BitHfQuantizer
# .validate_environment refuses to load without bitsandbytes (transformers 5.23 quantizers/quantizer_bnb_4bit.py).
METHOD_PACKAGES = {"lora": {"peft"}, "full": set(), "qlora": {"peft", "bitsandbytes"}}
# What accelerate needs per distributed_type: DEEPSPEED checks is_deepspeed_available() (accelerate 1.15
# utils/imports.py); FSDP and MULTI_GPU are torch.distributed.
DISTRIBUTED_PACKAGES = {"MULTI_GPU": set(), "FSDP": set(), "DEEPSPEED": {"deepspeed"}}
BASE = {"torch", "transformers", "accelerate"}


def _component() -> dict:
    return yaml.safe_load((TRAIN / "component.yaml").read_text())


def _pins(image: str) -> dict[str, str]:
    lines = (ENV_DIR / image / "requirements.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pins}


def _offers() -> list[tuple[str, set[str]]]:
    methods = _component()["inputs"]["method"]["enum"]
    unknown = set(methods) - set(METHOD_PACKAGES)
    assert not unknown, f"components/train/component.yaml offers method(s) {unknown}: declare their packages here"
    offers = [(f"method {m}", BASE | METHOD_PACKAGES[m]) for m in methods]
    for config in sorted((TRAIN / "accelerate").glob("*.yaml")):
        kind = yaml.safe_load(config.read_text())["distributed_type"]
        assert kind in DISTRIBUTED_PACKAGES, f"{config.name}: distributed_type {kind}: declare its packages here"
        offers.append((f"accelerate/{config.name}", BASE | DISTRIBUTED_PACKAGES[kind]))
    return offers


@pytest.mark.parametrize(("offer", "packages"), _offers(), ids=[o for o, _ in _offers()])
def test_the_train_image_holds_what_each_offer_needs(offer: str, packages: set[str]) -> None:
    image = _component()["environment"]
    pins = _pins(image)
    missing = sorted(p for p in packages if canonicalize_name(p) not in pins)
    assert not missing, f"{offer} needs {missing}, not in environments/{image}/requirements.txt"


def test_every_pin_of_the_train_image_meets_its_dependencies_requirements() -> None:
    image = _component()["environment"]
    pins = _pins(image)
    lock = render.read_lock()
    env = {**default_environment(), "extra": ""}
    broken = []
    for name, version in pins.items():
        for spec in lock.get(name)["requires"]:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in render.NOT_LOCKED:  # pip/setuptools/wheel come with every venv
                continue
            assert dep in pins, f"{name}=={version} requires {req}, which environments/{image} does not pin"
            if not req.specifier.contains(pins[dep], prereleases=True):
                broken.append(f"{name}=={version} requires {req}, pinned {dep}=={pins[dep]}")
    assert not broken, "\n".join(broken)
