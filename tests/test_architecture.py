"""The structure the README and docs/adr/0004 promise: short functions, a torch-free path for
inspection and training-free methods, one front door, one registry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import onnx
import yaml

import compressors
from compressors.methods import METHODS
from service.spec import parse_spec
from tests.conftest import ROOT

LONGEST = 60  # lines, decorators and docstring included


def long_functions(folder: Path) -> list[str]:
    """``file:line name (n lines)`` for every function in ``folder`` longer than LONGEST."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - start + 1
                if length > LONGEST:
                    found.append(f"{path.relative_to(folder)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_the_library_or_the_service_is_longer_than_60_lines() -> None:
    assert long_functions(ROOT / "compressors") + long_functions(ROOT / "service") == []


def test_the_length_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LONGEST))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\nasync def long():\n{body}\n")
    assert long_functions(tmp_path) == [f"m.py:5 long ({LONGEST + 1} lines)"]


NO_TORCH = """
import sys
from service.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx2torch", "torchvision"))
print("exit", code, "torch-modules", len(loaded), loaded[:3])
"""


def test_compressing_with_svd_never_imports_torch(digits_mlp_onnx: Path, tmp_path: Path) -> None:
    """``modelpress compress --method svd`` runs without torch; fine-tuning loads it."""
    svd = ["compress", str(digits_mlp_onnx), "--method", "svd", "--data", "digits", "--no-latency"]
    assert "exit 0 torch-modules 0 []" in _probe(*svd, "-o", str(tmp_path / "small.onnx"))
    # the same probe sees torch when a method needs it
    tuned = _probe(*svd[:3], "prune", *svd[4:], "--finetune-epochs", "1", "-o", str(tmp_path / "tuned.onnx"))
    assert "exit 0" in tuned and "exit 0 torch-modules 0" not in tuned


def test_inspect_gives_the_retraining_verdict_without_torch(digits_mlp_onnx: Path, tmp_path: Path) -> None:
    """``modelpress inspect`` says whether a model retrains from the torch-free operator table."""
    out = _probe("inspect", str(digits_mlp_onnx))
    assert "exit 0 torch-modules 0 []" in out and "retrainable: yes" in out
    # an operator onnx2torch has no converter for is named, still without torch
    model = onnx.load(str(digits_mlp_onnx))
    relu = next(node for node in model.graph.node if node.op_type == "Relu")
    relu.op_type, relu.name = "Shrink", "odd"
    onnx.save(model, str(tmp_path / "odd.onnx"))
    odd = _probe("inspect", str(tmp_path / "odd.onnx"))
    assert "exit 0 torch-modules 0 []" in odd
    assert "retrainable: no, because operator Shrink" in odd and "'odd'" in odd


def _probe(*args: str) -> str:
    """``modelpress ARGS`` in a fresh interpreter; its exit code and the torch modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    return done.stdout + done.stderr


def test_the_front_door_lists_only_what_resolves() -> None:
    assert all(hasattr(compressors, name) for name in compressors.__all__)
    for name in (
        "load_model",
        "load_dataset",
        "inspect_model",
        "compress",
        "sweep",
        "Report",
        "ModelpressError",
    ):
        assert name in compressors.__all__


def test_every_registered_method_is_a_job_spec_and_an_openapi_enum_member() -> None:
    schema = yaml.safe_load((ROOT / "openapi.yaml").read_text())["components"]["schemas"]
    jobs = {
        s["properties"]["method"]["const"]: s
        for s in schema.values()
        if "const" in s.get("properties", {}).get("method", {})
    }
    assert set(jobs) == set(METHODS)
    assert schema["SweepCreate"]["properties"]["methods"]["items"]["enum"] == list(METHODS)
    for name, method in METHODS.items():
        assert jobs[name]["x-shrinks"] == method.shrinks
        spec = parse_spec({"method": name})
        assert (
            spec.rank is None if method.default_rule is None else spec.rank.as_dict() == method.default_rule
        )
