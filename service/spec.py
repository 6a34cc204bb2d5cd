"""The job spec: one pydantic model shared by the API, the database and the queue payload.

A discriminated union keyed by ``method``, validated strictly (JSON types as the OpenAPI
document states them: `true`, not `1`). Defaults for ``strength`` are per method (they
mean different things: λ of a nuclear norm, a weight-decay coefficient, an l1 or group-lasso
λ, a KL weight) and were chosen on the digits review (docs/review.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator

from compressors.ranks import Energy, RankRule, Target
from compressors.training import TrainConfig

DEFAULT_STRENGTH = {"nuclear": 1.0, "l2": 0.01, "l1": 1.0, "group_lasso": 1.0, "variational": 0.1}
RETRAINING = frozenset(DEFAULT_STRENGTH)
SPARSE = frozenset({"l1", "prune", "variational"})  # unstructured: nonzeros shrink, MACs do not
RANK_KEYS = ("energy", "target_macs", "target_params")


def integral(value: object) -> object:
    # JSON Schema counts 5.0 as an integer, which strict validation alone would refuse
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(integral)]  # bounds go first inside a list (see batches)


def _given(*keys: str) -> dict:
    """JSON Schema for "one of ``keys`` is given" (present and a number, not null)."""
    branches = [{"type": "object", "required": [k], "properties": {k: {"type": "number"}}} for k in keys]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def _exactly_one(*keys: str) -> dict:
    """JSON Schema for "exactly one of ``keys`` is given", said with ``not`` only (neither two
    nor none), so that the OpenAPI document states the rule the validators below enforce while
    client generators, which ignore ``not``, still see one object with optional fields."""
    pairs = [{"allOf": [_given(a), _given(b)]} for i, a in enumerate(keys) for b in keys[i + 1 :]]
    return {"not": {"anyOf": [*pairs, {"not": _given(*keys)}]}}


class RankSpec(BaseModel):
    """Exactly one of: per-layer energy, or a whole-model target ratio."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_exactly_one(*RANK_KEYS))

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


class TrainingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    epochs: Integer = Field(5, ge=1, le=1000, description="regularized training epochs")
    batch_size: Integer = Field(64, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine decays the step size (and nuclear's prox threshold) to 0"
    )
    strength: float | None = Field(
        None, ge=0.0, le=1e6, description="regularizer strength; per-method default"
    )
    strength_ramp: float = Field(
        0.0, ge=0.0, le=1.0, description="nuclear: share of training over which λ rises from 0"
    )
    finetune_epochs: Integer = Field(0, ge=0, le=1000, description="epochs on the compressed model")
    distill: bool = Field(False, description="distill from the original (always on without labels)")
    seed: Integer = Field(0, ge=0, le=2**31 - 1)

    def config(self, epochs: int | None = None) -> TrainConfig:
        return TrainConfig(
            epochs=epochs or self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            lr_schedule=self.lr_schedule,
            seed=self.seed,
            distill=self.distill,
        )


class EvaluationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    latency: bool = True
    threads: Integer = Field(1, ge=1, le=64, description="onnxruntime intra-op threads for latency")
    batches: list[Annotated[int, Field(ge=1, le=4096), BeforeValidator(integral)]] = Field(
        default_factory=lambda: [1, 32], max_length=4
    )


def _method_required(schema: dict) -> None:
    # the union is told apart by `method`, so a request must send it; its default only names the class
    schema["required"] = ["method", *[k for k in schema.get("required", []) if k != "method"]]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_method_required)

    rank: RankSpec = Field(default_factory=lambda: RankSpec(energy=0.9))
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)

    @property
    def seed(self) -> int:
        return self.training.seed

    def strength(self) -> float:
        method = self.method  # type: ignore[attr-defined]
        given = self.training.strength
        return DEFAULT_STRENGTH.get(method, 0.0) if given is None else given


class _Sparse(_Spec):
    rank: RankSpec = Field(
        default_factory=lambda: RankSpec(target_params=0.25),
        json_schema_extra={"not": _given("target_macs")},
    )

    @model_validator(mode="after")
    def _no_macs_target(self) -> _Sparse:
        if self.rank.target_macs is not None:
            raise ValueError(
                "unstructured sparsity does not lower MACs; use target_params (a nonzeros ratio)"
            )
        return self


class SvdSpec(_Spec):
    """Training-free truncated SVD (optionally fine-tuned after)."""

    method: Literal["svd"] = "svd"


class NuclearSpec(_Spec):
    method: Literal["nuclear"] = "nuclear"


class L2Spec(_Spec):
    method: Literal["l2"] = "l2"


class GroupLassoSpec(_Spec):
    method: Literal["group_lasso"] = "group_lasso"


class L1Spec(_Sparse):
    method: Literal["l1"] = "l1"


class PruneSpec(_Sparse):
    method: Literal["prune"] = "prune"


class VariationalSpec(_Sparse):
    method: Literal["variational"] = "variational"
    rank: RankSpec | None = Field(  # type: ignore[assignment]
        None,
        description="target_params, or none to prune at log α > 3",
        json_schema_extra={"not": _given("energy", "target_macs")},
    )

    @model_validator(mode="after")
    def _no_macs_target(self) -> VariationalSpec:
        if self.rank is not None and self.rank.target_params is None:
            raise ValueError("variational takes target_params or no rank at all (log α > 3 threshold)")
        return self


CompressionSpec = Annotated[
    SvdSpec | NuclearSpec | L2Spec | GroupLassoSpec | L1Spec | PruneSpec | VariationalSpec,
    Field(discriminator="method"),
]
METHODS = ("svd", "nuclear", "l2", "l1", "group_lasso", "variational", "prune")
spec_adapter: TypeAdapter[CompressionSpec] = TypeAdapter(CompressionSpec)


def parse_spec(data: dict) -> CompressionSpec:
    return spec_adapter.validate_python(data)
