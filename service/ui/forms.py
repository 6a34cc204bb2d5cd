"""Form fields to the API's request bodies: a job spec or a sweep, checked by the API's own models.

A browser sends every field as text; this turns each into the JSON type the API's strict spec
expects, and leaves every rule about what is valid to the spec itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import TypeAdapter

from service.problems import Problem
from service.schemas import JobCreate, SweepCreate

T = TypeVar("T", int, float)
job_adapter: TypeAdapter[Any] = TypeAdapter(JobCreate)


def _number(form: Mapping[str, Any], key: str, kind: Callable[[str], T]) -> T | None:
    raw = str(form.get(key) or "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        word = "a whole number" if kind is int else "a number"
        raise Problem("validation-error", f"{key.replace('_', ' ')}: '{raw}' is not {word}.") from None


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def job_body(form: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /v1/jobs body the form describes; blank fields take the spec's defaults."""
    body: dict[str, Any] = {
        "model_id": str(form.get("model_id") or ""),
        "method": str(form.get("method") or ""),
    }
    if form.get("dataset_id"):
        body["dataset_id"] = str(form["dataset_id"])
    rule = str(form.get("rule") or "")
    if rule:
        value = _number(form, "rule_value", float)
        if value is None:
            raise Problem("validation-error", f"give a value for {rule.replace('_', ' ')}.")
        body["rank"] = {rule: value}
    training = _present(
        {
            "epochs": _number(form, "epochs", int),
            "finetune_epochs": _number(form, "finetune_epochs", int),
            "lr": _number(form, "lr", float),
            "strength": _number(form, "strength", float),
        }
    )
    if training:
        body["training"] = training
    body["evaluation"] = {"latency": form.get("latency") == "on"}
    return body


def parse_job(form: Mapping[str, Any]) -> Any:
    """The API's own JobCreate, validated exactly as POST /v1/jobs validates it."""
    return job_adapter.validate_python(job_body(form))


def sweep_body(methods: list[str], form: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_id": str(form.get("model_id") or ""),
        "dataset_id": str(form.get("dataset_id") or ""),
        "methods": methods,
        "latency": form.get("latency") == "on",
    }
    targets = str(form.get("targets") or "").replace(",", " ").split()
    if targets:
        try:
            body["targets"] = [float(t) for t in targets]
        except ValueError:
            raise Problem("validation-error", "targets: give ratios such as 0.5, 0.25, 0.125.") from None
    training = _present(
        {"epochs": _number(form, "epochs", int), "finetune_epochs": _number(form, "finetune_epochs", int)}
    )
    if training:
        body["training"] = training
    return body


def parse_sweep(methods: list[str], form: Mapping[str, Any]) -> SweepCreate:
    return SweepCreate.model_validate(sweep_body(methods, form))
