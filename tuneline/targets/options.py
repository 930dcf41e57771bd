"""Settings of one compilation that do not belong in the pipeline YAML (they differ per cluster or run): those
every target reads, and each target's own (declared in its folder's options.py, by target name here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..spec.models import Images
from .images import ImageLock, ImagePlan, resolve_images

T = TypeVar("T")

@dataclass(frozen=True)
class CompileOptions:
    image_registry: str | None = None            # wins over the pipeline's `images.registry`
    image_tag: str | None = None                 # wins over the pipeline's `images.tag`
    production: bool = False                     # refuse mutable or missing image tags
    image_lock: ImageLock | None = None          # a digest per environment (--images FILE); wins over both
    images: ImagePlan = field(default_factory=lambda: resolve_images(None))  # resolved per pipeline
    no_cache: bool = False                       # every step's cache off, whatever the spec says
    # Each target's own options (tuneline/targets/<name>/options.py), by target name; a target absent here
    # compiles with its defaults.
    platform: Mapping[str, Any] = field(default_factory=dict)

    def of(self, target: str, default: T) -> T:
        """`target`'s own options, else `default` (that target's defaults)."""
        return self.platform.get(target, default)

    def for_pipeline(self, spec_images: Images | None) -> CompileOptions:
        plan = resolve_images(spec_images, self.image_registry, self.image_tag, self.production,
                              self.image_lock)
        return replace(self, images=plan)
