"""The ``model:`` section of a config: the architecture and the layer options a scheme's
tokens are built with."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from bnorder.core.schema import AddedLater, NotIdentity, Strict

# model.preset → the keys it sets (where the config leaves them out)
PRESETS: dict[str, dict[str, Any]] = {
    "wrn-16-4": {"arch": "wrn", "depth": 16, "widen_factor": 4},
    "wrn-28-10": {"arch": "wrn", "depth": 28, "widen_factor": 10},
    "densenet-bc-100-12": {"arch": "densenet", "depth": 100, "growth_rate": 12},
}


class ModelConfig(Strict):
    # a published network by name: sets arch and its keys (any given here win)
    preset: Annotated[
        Literal["wrn-16-4", "wrn-28-10", "densenet-bc-100-12"] | None,
        NotIdentity("what it sets is in the other model keys"),
    ] = None
    arch: Literal["vgg", "resnet", "wrn", "densenet"] = "vgg"
    # at most 6 stages: five 2×2 max-pools bring 32×32 down to 1×1
    widths: list[int] = Field(default=[64, 128, 256], min_length=1, max_length=6)
    convs_per_stage: int = Field(default=2, gt=0)
    blocks_per_stage: int = Field(default=2, gt=0)  # resnet: residual blocks per stage
    # wrn and densenet: 6n + 4 layers; None: WRN-16 or DenseNet-BC-100
    depth: Annotated[int | None, AddedLater(None)] = Field(default=None, ge=10, le=1000)
    # wrn: k, widths 16k, 32k, 64k
    widen_factor: Annotated[int, AddedLater(4)] = Field(default=4, gt=0, le=64)
    # densenet: new maps per layer, and the share of them kept at transitions
    growth_rate: Annotated[int, AddedLater(12)] = Field(default=12, gt=0, le=512)
    compression: Annotated[float, AddedLater(0.5)] = Field(default=0.5, gt=0.0, le=1.0)
    hidden: list[int] = Field(default=[])  # hidden linear layers before the classifier
    dropout: float = Field(default=0.3, ge=0.0, lt=1.0)
    uout_beta: float = Field(default=0.1, ge=0.0, lt=1.0)  # the range of Uout's noise
    activation: Literal["relu", "gelu", "silu", "leaky_relu"] = "relu"

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if not isinstance(value, dict) or value.get("preset") not in PRESETS:
            return value  # no preset, or an unknown one: the field's error says so
        preset = PRESETS[value["preset"]]
        if value.get("arch", preset["arch"]) != preset["arch"]:
            raise ValueError(
                f"arch: {value['arch']}, where preset {value['preset']} is a {preset['arch']}"
            )
        return {**preset, **value}

    @field_validator("depth")
    @classmethod
    def _six_n_plus_four(cls, depth: int | None) -> int | None:
        if depth is not None and (depth - 4) % 6:
            raise ValueError(f"{depth} is not 6n + 4 (10, 16, 22, 28, 40, 100, …)")
        return depth

    @field_validator("widths", "hidden")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v <= 0 for v in values):
            raise ValueError("every width must be a positive integer")
        return values
