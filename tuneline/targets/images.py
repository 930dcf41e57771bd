"""Which container image each step runs: `<registry>/<environment>:<tag>`, set once per pipeline, or
`<registry>/<environment>@sha256:...` from an image lock that pins each environment's own digest.

KFP caches a step on its image string, so a mutable tag (`latest`) gives stale cache hits after a rebuild;
`production` refuses it, and a missing tag, and an environment with no `environments/<name>/` folder.

An image lock (`--images FILE`, the retraining CronJob's `tuneline-images` ConfigMap) is YAML:
    registry: myacr.azurecr.io/tuneline
    digests: {control: "sha256:...", train-cpu: "sha256:...", train-gpu: "sha256:...", serve: "sha256:..."}
One tag cannot pin several images (each build has its own digest), hence a digest per environment; with a lock,
an environment it does not list is refused rather than pulled by a tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import settings
from ..spec.models import Images
from . import CompileError

DEFAULT_REGISTRY = "tuneline"
DEFAULT_TAG = "latest"
MUTABLE_TAGS = frozenset({"latest", "main", "master", "dev", "develop", "stable", "edge", "nightly", "head"})
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ImageLock:
    """Each environment's image digest in one registry (what `make images` / `az acr build` reported)."""
    registry: str
    digests: tuple[tuple[str, str], ...]

    def digest(self, environment: str) -> str | None:
        return dict(self.digests).get(environment)


def load_image_lock(path: Path) -> ImageLock:
    """Read an image lock; a missing field or a digest that is not `sha256:<64 hex>` names the file and key."""
    try:
        body = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CompileError(f"{path}: cannot read the image lock: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("registry"), str) or not body["registry"].strip():
        raise CompileError(f"{path}: an image lock needs `registry: <host>/<path>` (the registry the images are in)")
    digests = body.get("digests")
    if not isinstance(digests, dict) or not digests:
        raise CompileError(f"{path}: an image lock needs `digests: {{<environment>: sha256:<64 hex>}}`")
    for name, digest in digests.items():
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise CompileError(f"{path}: digests.{name}: {digest!r} is not a sha256:<64 hex> digest")
    return ImageLock(registry=body["registry"].strip().rstrip("/"),
                     digests=tuple(sorted((str(k), v) for k, v in digests.items())))


@dataclass(frozen=True)
class ImagePlan:
    registry: str
    tag: str
    lock: ImageLock | None = None

    @property
    def is_digest(self) -> bool:
        return bool(_DIGEST.match(self.tag))

    @property
    def mutable(self) -> bool:
        return not self.is_digest and self.tag.lower() in MUTABLE_TAGS

    def image(self, environment: str) -> str:
        if self.lock is not None:
            digest = self.lock.digest(environment)
            if digest is None:
                raise CompileError(f"the image lock pins no digest for environment '{environment}' (it pins "
                                   f"{', '.join(name for name, _ in self.lock.digests)}): add its digest")
            return f"{self.lock.registry}/{environment}@{digest}"
        separator = "@" if self.is_digest else ":"
        return f"{self.registry}/{environment}{separator}{self.tag}"


def deploy_image_env(environment: str | None, plan: ImagePlan) -> dict[str, str]:
    """What a step whose component `deploys_image` gets: that environment's image from the plan of its own."""
    return {settings.DEPLOY_IMAGE_VAR: plan.image(environment)} if environment else {}


def resolve_images(spec_images: Images | None, registry: str | None = None, tag: str | None = None,
                   production: bool = False, lock: ImageLock | None = None) -> ImagePlan:
    """Command-line values win over the pipeline's `images:`; `production` refuses anything mutable. An image
    lock pins every image by digest and wins over both."""
    if lock is not None:
        if registry and registry.rstrip("/") != lock.registry:
            raise CompileError(f"--image-registry {registry} differs from the image lock's registry {lock.registry}")
        return ImagePlan(registry=lock.registry, tag=lock.digests[0][1], lock=lock)
    chosen_registry = registry or (spec_images.registry if spec_images else None)
    chosen_tag = tag or (spec_images.tag if spec_images else None)
    if production:
        if not chosen_registry:
            raise CompileError("--production needs an image registry (pipeline `images.registry` or "
                               "--image-registry)")
        if not chosen_tag:
            raise CompileError("--production needs an immutable image tag or sha256 digest (pipeline "
                               "`images.tag` or --image-tag)")
    plan = ImagePlan(registry=(chosen_registry or DEFAULT_REGISTRY).rstrip("/"), tag=chosen_tag or DEFAULT_TAG)
    if not plan.is_digest and not _TAG.match(plan.tag):
        raise CompileError(f"image tag '{plan.tag}' is not a valid tag (letters, digits, '_', '.', '-'; "
                           f"at most 128) nor a sha256:<64 hex> digest")
    if production and plan.mutable:
        raise CompileError(f"--production refuses the mutable image tag '{plan.tag}': KFP caches steps on the "
                           f"image string, so a rebuilt '{plan.tag}' would be served stale cache hits; use a "
                           f"version or a sha256 digest")
    return plan


def check_environments(root: Path, environments: set[str]) -> None:
    """Every environment a step names must have a folder that builds its image."""
    missing = sorted(env for env in environments if not (root / "environments" / env).is_dir())
    if missing:
        raise CompileError(f"no environments/<name>/ folder for {', '.join(missing)}: its image cannot be built")
