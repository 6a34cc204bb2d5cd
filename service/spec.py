"""The job spec: one pydantic model shared by the API, the database and the queue payload.

A discriminated union keyed by ``method``; each variant accepts only what that method uses.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compressors.ranks import Energy, RankRule, Target


class RankSpec(BaseModel):
    """Exactly one of: per-layer energy, or a whole-model target ratio."""

    model_config = ConfigDict(extra="forbid")

    energy: float | None = Field(None, gt=0.0, le=1.0, description="keep >= this share of Σσ² per layer")
    target_macs: float | None = Field(None, gt=0.0, lt=1.0, description="MACs after / before, whole model")
    target_params: float | None = Field(None, gt=0.0, lt=1.0, description="params after / before")

    @model_validator(mode="after")
    def _exactly_one(self) -> RankSpec:
        given = [k for k in ("energy", "target_macs", "target_params") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of energy, target_macs, target_params")
        return self

    def rule(self) -> RankRule:
        if self.energy is not None:
            return Energy(self.energy)
        if self.target_macs is not None:
            return Target(self.target_macs, "macs")
        assert self.target_params is not None
        return Target(self.target_params, "params")

    def as_dict(self) -> dict[str, float]:
        return self.model_dump(exclude_none=True)


class EvaluationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency: bool = True
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads for latency")
    batches: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [1, 32])


class SvdSpec(BaseModel):
    """Training-free truncated SVD."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["svd"] = "svd"
    rank: RankSpec = Field(default_factory=lambda: RankSpec(energy=0.9))
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    seed: int = 0


# Grows into Annotated[SvdSpec | ..., Field(discriminator="method")] as methods are added.
CompressionSpec = SvdSpec
