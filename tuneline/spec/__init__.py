"""Pipeline and component specs: YAML in, validated typed objects out."""

from .load import (
    Binding,
    Component,
    Literal,
    OutputRef,
    ParamRef,
    Pipeline,
    load_component,
    load_pipeline,
)
from .models import ComponentSpec, IOType, PipelineSpec
from .problems import Problem, SpecError

__all__ = [
    "Binding", "Component", "ComponentSpec", "IOType", "Literal", "OutputRef", "ParamRef", "Pipeline",
    "PipelineSpec", "Problem", "SpecError", "load_component", "load_pipeline",
]
