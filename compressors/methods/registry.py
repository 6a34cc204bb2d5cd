"""The method registry: every method is one module that registers its ``train`` function
with the facts other code needs about it, so no other module keeps a copy of them.

The protocol is "train once, cut at many levels": ``train(model, data, config, hooks)``
returns a ``Trained`` whose ``cut(rule)`` truncates, prunes or removes channels by a rank
rule and returns a ``CompressionResult``. Training-free methods train nothing: their
``Trained`` holds the original graph. Registering imports no torch; a retraining method
imports the training machinery inside its ``train``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import onnx

from compressors.errors import InvalidSpec
from compressors.onnx.graph import Shape
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.ranks import Energy, RankRule, Target

if TYPE_CHECKING:
    from compressors.intake.loading import LoadedModel
    from compressors.onnx.result import CompressionResult
    from compressors.training.inputs import Hooks, TrainConfig, TrainingData

Shrinks = Literal["structure", "nonzeros"]
RULES = ("energy", "target_macs", "target_params")


class Trained(Protocol):
    """A model trained (or not) by a method, ready to be cut at any level."""

    summary: dict[str, Any]  # what training did (history, seconds, strength); {} when nothing

    def cut(self, rule: RankRule | None) -> CompressionResult: ...


TrainFunction = Callable[["LoadedModel", "TrainingData | None", "TrainConfig", "Hooks"], Trained]
# refuses, before any training, a rule the model cannot meet: (model, rule, per-input sample shapes)
Precheck = Callable[[onnx.ModelProto, RankRule | None, "Mapping[str, Shape] | None"], None]


@dataclass(frozen=True)
class Method:
    """A registered method and its facts."""

    name: str  # what users type: the job spec's ``method``
    summary: str  # one line: what it does
    shrinks: Shrinks  # "structure": params and MACs; "nonzeros": unstructured sparsity only
    rules: tuple[str, ...]  # the rank rules it accepts, out of RULES
    default_rule: Mapping[str, float] | None  # the rule a spec without one gets; None: the method's own
    strength: float | None  # default regularizer λ; None for training-free methods
    sweep_strengths: tuple[float, ...] = ()  # the λ grid a sweep tries by default
    train_function: TrainFunction | None = field(default=None, compare=False, repr=False)
    precheck: Precheck | None = field(default=None, compare=False, repr=False)

    @property
    def retrains(self) -> bool:
        """Trains the model before cutting it, and so needs data."""
        return self.strength is not None

    @property
    def sparse(self) -> bool:
        return self.shrinks == "nonzeros"

    @property
    def sweep_metric(self) -> str:
        """What a sweep's targets are ratios of: MACs when it can lower them, else params."""
        return "params" if self.sparse else "macs"

    def strength_for(self, config: TrainConfig) -> float | None:
        return self.strength if config.strength is None else config.strength

    def check_rule(self, rule: RankRule | None) -> None:
        """Refuse a rank rule this method cannot apply, saying which it takes."""
        if rule is None and self.default_rule is None:
            return
        key = rule_key(rule) if rule is not None else None
        if key not in self.rules:
            takes = " or ".join(self.rules) + (" or no rank at all" if self.default_rule is None else "")
            why = (
                "; unstructured sparsity does not lower MACs" if key == "target_macs" and self.sparse else ""
            )
            raise InvalidSpec(f"{self.name} takes {takes}, not {key or 'no rank'}{why}.")

    def check_model(
        self, model: onnx.ModelProto, rule: RankRule | None, sample_shapes: Mapping[str, Shape] | None
    ) -> None:
        """Refuse, before training, a model this method finds nothing to cut in, or a rule out of reach."""
        if self.precheck is not None:
            self.precheck(model, rule, sample_shapes)

    def train(
        self, model: LoadedModel, data: TrainingData | None, config: TrainConfig, hooks: Hooks
    ) -> Trained:
        """Train (retraining methods need ``data``) with the strength defaulted per method."""
        if self.retrains and data is None:
            raise InvalidSpec(
                f"{self.name} retrains the model and needs data: give a dataset (digits or an .npz)."
            )
        assert self.train_function is not None
        return self.train_function(model, data, replace(config, strength=self.strength_for(config)), hooks)


METHODS: dict[str, Method] = {}


def register(
    name: str,
    shrinks: Shrinks,
    rules: tuple[str, ...],
    default_rule: Mapping[str, float] | None,
    *,
    strength: float | None = None,
    sweep: tuple[float, ...] = (),
    precheck: Precheck | None = None,
) -> Callable[[TrainFunction], TrainFunction]:
    """Register the decorated ``train`` function as method ``name`` with its facts (see
    ``Method``). Its summary is the first line of its module's docstring, after the name."""
    unknown = set(rules) - set(RULES)
    if unknown or name in METHODS:
        raise ValueError(f"method {name!r}: unknown rules {sorted(unknown)} or registered twice")

    def add(train: TrainFunction) -> TrainFunction:
        doc = (sys.modules[train.__module__].__doc__ or name).strip().splitlines()[0]
        summary = doc.removeprefix(f"``{name}``: ").rstrip(".")
        METHODS[name] = Method(name, summary, shrinks, rules, default_rule, strength, sweep, train, precheck)
        return train

    return add


def get(name: str) -> Method:
    """The method called ``name``, or a refusal that lists them."""
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidSpec(f"unknown method {name!r}; choose one of {', '.join(METHODS)}.") from None


def rule_key(rule: RankRule) -> str:
    """The spec key a rule is written with: energy, target_macs or target_params."""
    if isinstance(rule, Energy):
        return "energy"
    if isinstance(rule, Target):
        return f"target_{rule.metric}"
    return "ranks"


def rule_from(values: Mapping[str, float] | None) -> RankRule | None:
    """``{"energy": e}`` / ``{"target_macs": r}`` / ``{"target_params": r}`` as a rule."""
    if not values:
        return None
    (key, value), *rest = values.items()
    if rest or key not in RULES:
        raise InvalidSpec(f"give exactly one of {', '.join(RULES)}; got {sorted(values)}.")
    return Energy(value) if key == "energy" else Target(value, key.removeprefix("target_"))


def rule_as_dict(rule: RankRule | None) -> dict[str, float] | None:
    if rule is None:
        return None
    return {rule_key(rule): rule.energy if isinstance(rule, Energy) else getattr(rule, "ratio", 0.0)}


Cutter = Callable[["onnx.ModelProto", Mapping[str, Shape], RankRule, int], "CompressionResult"]


@dataclass
class Weights:
    """A graph whose weights a method trained (or left as they were), cut by an ONNX-level
    function such as truncated SVD or magnitude pruning."""

    model: onnx.ModelProto
    sample_shapes: Mapping[str, Shape] | None
    cutter: Cutter
    summary: dict[str, Any] = field(default_factory=dict)

    def cut(self, rule: RankRule | None) -> CompressionResult:
        if rule is None:
            raise InvalidSpec("give a rank rule: energy, target_macs or target_params.")
        shapes, batch = analysis_shapes(self.model, self.sample_shapes)
        return self.cutter(self.model, shapes, rule, batch)
