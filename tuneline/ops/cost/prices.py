"""The price table (config/prices.yaml): SKUs, GPU peaks, spot discount and efficiency assumptions."""

from __future__ import annotations

import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...spec.yamlsafe import load_yaml

DEFAULT_PRICES = Path("config/prices.yaml")


class CostError(ValueError):
    """Bad price table, pipeline or dataset for an estimate; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GpuSpec(_Strict):
    peak_tflops: float = Field(gt=0)
    memory_gb: float | None = None


class Sku(_Strict):
    description: str = ""
    gpus: int = Field(ge=0)
    gpu: str | None = None
    price_per_hour: float = Field(ge=0)
    spot_price_per_hour: float | None = Field(None, ge=0)
    targets: list[str]


class PriceTable(_Strict):
    currency: str = "USD"
    priced: datetime.date | None = Field(None, description="the day the list prices were read")
    spot_discount: float = Field(0.7, ge=0, lt=1)
    assumed_mfu: float = Field(0.3, gt=0, le=1)
    scaling_efficiency: float = Field(0.9, gt=0, le=1)
    cpu_efficiency: float = Field(0.5, gt=0, le=1)
    overhead_s: dict[str, float] = Field(default_factory=dict)
    gpus: dict[str, GpuSpec] = Field(default_factory=dict)
    skus: dict[str, Sku]

    def spot_price(self, sku: Sku) -> float:
        if sku.spot_price_per_hour is not None:
            return sku.spot_price_per_hour
        return sku.price_per_hour * (1 - self.spot_discount)


def load_prices(path: Path | None = None) -> PriceTable:
    path = path or DEFAULT_PRICES
    if not path.is_file():
        raise CostError(f"price table not found: {path} (pass --prices FILE)")
    loaded = load_yaml(path)
    try:
        table = PriceTable.model_validate(loaded.data)
    except ValidationError as exc:
        problems = [
            str(loaded.problem(tuple(e["loc"]), f"{'.'.join(map(str, e['loc']))}: {e['msg']}"))
            for e in exc.errors()
        ]
        raise CostError("invalid price table:\n" + "\n".join(problems)) from None
    for name, sku in table.skus.items():
        if sku.gpus and sku.gpu not in table.gpus:
            raise CostError(
                str(
                    loaded.problem(
                        ("skus", name, "gpu"),
                        f"skus.{name}.gpu: '{sku.gpu}' is not under gpus: ({', '.join(table.gpus)})",
                    )
                )
            )
    return table
