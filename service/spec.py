"""The job spec: one pydantic model shared by the API, the database and the queue payload.

A discriminated union keyed by ``method``, one member per registered method
(``compressors.METHODS``): its rank rules, default rule and default ``strength`` come from
the method's registry entry. Strengths mean different things per method (λ of a nuclear
norm, a weight-decay coefficient, an l1 or group-lasso λ, a KL weight); the defaults were
chosen on the digits review (docs/review.md). Validation is strict: JSON types as the
OpenAPI document states them (`true`, not `1`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, create_model, model_validator

from compressors import (
    METHODS,
    RULES,
    CompressOptions,
    Energy,
    InvalidSpec,
    Method,
    Quantize,
    RankRule,
    Target,
    TrainConfig,
    Weighting,
)

RANK_KEYS = RULES
BUDGET_KEYS = (*RULES, "max_drop")  # exactly one of these picks how far to compress


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
    """Exactly one of: per-layer energy, a whole-model target ratio, or an accuracy budget;
    and how truncation weighs what it drops."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_exactly_one(*BUDGET_KEYS))

    energy: float | None = Field(None, gt=0.0, le=1.0, description="keep >= this share of Σσ² per layer")
    target_macs: float | None = Field(None, gt=0.0, lt=1.0, description="MACs after / before, whole model")
    target_params: float | None = Field(None, gt=0.0, lt=1.0, description="params after / before")
    max_drop: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="the largest reduction (MACs; params for sparse methods) whose top-1 drop, or "
        "disagreement with the original without labels, stays within this; searched on the training "
        "split, reported on the held-out one",
    )
    weighting: Weighting | None = Field(
        None,
        description="activations: truncate each layer to keep its output on the data (svd, l2, "
        "nuclear); none: by weight energy. Default: activations when a dataset is given",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RankSpec:
        given = [k for k in BUDGET_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of energy, target_macs, target_params, max_drop")
        return self

    def rule(self) -> RankRule | None:
        """The rank rule, or None for an accuracy budget (``max_drop``)."""
        if self.max_drop is not None:
            return None
        if self.energy is not None:
            return Energy(self.energy)
        if self.target_macs is not None:
            return Target(self.target_macs, "macs")
        assert self.target_params is not None
        return Target(self.target_params, "params")

    def as_dict(self) -> dict[str, float | str]:
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
    output: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="the model output holding the class scores, trained and evaluated (none: the first "
        "floating-point output whose last dimension fits the classes; a ZipMap output stands for its input)",
    )

    def config(self) -> TrainConfig:
        return TrainConfig(**{name: getattr(self, name) for name in _TRAIN_CONFIG_FIELDS})


# the training fields the library's TrainConfig takes (finetune_epochs is a stage of its own)
_TRAIN_CONFIG_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "seed",
    "distill",
    "strength",
    "strength_ramp",
    "output",
)


class EvaluationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    latency: bool = True
    threads: Integer = Field(1, ge=1, le=64, description="onnxruntime intra-op threads for latency")
    batches: list[Annotated[int, Field(ge=1, le=4096), BeforeValidator(integral)]] = Field(
        default_factory=lambda: [1, 32], max_length=4
    )


class SpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    method: str
    rank: RankSpec | None
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    quantize: Quantize = Field(
        "none",
        description="INT8 on top with onnxruntime: static (QDQ, per-channel, calibrated on the "
        "dataset) or dynamic (matrix products only; convolutions stay float)",
    )

    @property
    def seed(self) -> int:
        return self.training.seed

    @property
    def entry(self) -> Method:
        """The method's registry entry."""
        return METHODS[self.method]

    @model_validator(mode="after")
    def _rule_fits_the_method(self) -> SpecBase:
        try:
            if self.rank is None or self.rank.max_drop is None:
                self.entry.check_rule(self.rank.rule() if self.rank is not None else None)
            if self.rank is not None and self.rank.weighting == "activations":
                self.entry.weighting_for("activations", has_data=True)
        except InvalidSpec as exc:
            raise ValueError(exc.message) from None
        return self

    def options(self) -> CompressOptions:
        """The weighting, budget and quantization the library is asked for."""
        rank = self.rank
        return CompressOptions(
            rank.weighting if rank else None, rank.max_drop if rank else None, self.quantize
        )


def _schema_extra(method: Method) -> Any:
    def extra(schema: dict) -> None:
        # the union is told apart by `method`, so a request must send it; its default only names
        # the class. What shrinks is there for clients that check their method list against it.
        schema["required"] = ["method", *[k for k in schema.get("required", []) if k != "method"]]
        schema["x-shrinks"] = method.shrinks

    return extra


def spec_class(method: Method, base: type[BaseModel] = SpecBase, suffix: str = "Spec") -> type[BaseModel]:
    """The job spec of one method: ``method`` fixed to its name, ``rank`` defaulted to its rule."""
    rank: Any
    others = [key for key in RANK_KEYS if key not in method.rules]
    # the rules (and the weighting) this method refuses, stated with `not` (generators ignore it)
    branches = [_given(*others)] if others else []
    if not method.weighs:
        activations = {"weighting": {"const": "activations"}}
        branches.append({"type": "object", "required": ["weighting"], "properties": activations})
    not_ = branches[0] if len(branches) == 1 else {"anyOf": branches}
    refused: dict[str, Any] = {"json_schema_extra": {"not": not_}} if branches else {}
    if method.default_rule is None:
        rank = (
            RankSpec | None,
            Field(None, description=f"{' or '.join(method.rules)}, or none: {method.summary}", **refused),
        )
    else:
        default = dict(method.default_rule)
        rank = (RankSpec, Field(default_factory=lambda: RankSpec.model_validate(default), **refused))
    cls: type[BaseModel] = create_model(  # type: ignore[call-overload]
        "".join(part.capitalize() for part in method.name.split("_")) + suffix,
        __base__=base,
        __doc__=f"``{method.name}``: {method.summary}.",
        __module__=__name__,
        method=(Literal[method.name], method.name),  # type: ignore[arg-type, valid-type]
        rank=rank,
    )
    cls.model_config = {**cls.model_config, "json_schema_extra": _schema_extra(method)}
    cls.model_rebuild(force=True)
    return cls


SPECS = {name: spec_class(method) for name, method in METHODS.items()}
METHODS_NAMES = tuple(METHODS)
if TYPE_CHECKING:
    CompressionSpec = SpecBase
else:
    CompressionSpec = Annotated[Union[tuple(SPECS.values())], Field(discriminator="method")]  # noqa: UP007
spec_adapter: TypeAdapter[SpecBase] = TypeAdapter(CompressionSpec)


def parse_spec(data: dict) -> SpecBase:
    return spec_adapter.validate_python(data)
