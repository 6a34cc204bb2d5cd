"""The torch-free operator table that gives `inspect` its retraining verdict agrees with the
converter registry that retraining actually uses."""

from __future__ import annotations

import subprocess
import sys

from onnx import defs

from compressors.training.onnx_converters import live_table
from compressors.training.operators import CONVERTERS, has_converter


def test_table_is_the_live_registry():
    assert live_table() == CONVERTERS, "rewrite it with: python -m compressors.training.onnx_converters"


def test_lookup_agrees_with_onnx2torch_for_every_standard_operator_and_opset():
    from onnx2torch.node_converters.registry import get_converter

    ops = sorted({schema.name for schema in defs.get_all_schemas_with_history() if schema.domain == ""})
    checked = disagreements = 0
    for opset in range(7, 22):
        for op in ops:
            try:
                get_converter(op, opset, "")
                expected = True
            except NotImplementedError:
                expected = False
            checked += 1
            disagreements += has_converter(op, opset) != expected
    assert checked > 2000
    assert disagreements == 0
    assert has_converter("Gemm", 13) and not has_converter("LSTM", 13)


def test_the_table_loads_without_torch():
    code = "import sys, compressors.training.operators; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
