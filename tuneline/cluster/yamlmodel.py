"""Load a YAML file of the cluster's configuration into its pydantic model, with one error naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def load_yaml_model(model: type[Model], path: Path) -> Model:
    """`model` validated from the YAML at `path`; a ValueError lists every problem as `field.path: message`."""
    try:
        return model.model_validate(yaml.safe_load(Path(path).read_text()))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from exc
