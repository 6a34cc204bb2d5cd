"""Which ONNX operators retraining can convert to torch, as a table that needs no torch.

The table is onnx2torch's converter registry with this project's own converters added
(``onnx_converters.register``), written out so that ``modelpress inspect`` can give the
retraining verdict without importing torch. ``tests/test_operators.py`` checks it against
the live registry, so it cannot drift from what conversion actually does; after upgrading
onnx2torch or adding a converter, rewrite it with ``python -m compressors.training.onnx_converters``.
"""

from __future__ import annotations

import contextlib

from onnx import defs

# (domain, operator) -> the opset versions a converter is registered at, as onnx2torch
# keys them: by the version that introduced the operator's schema in force.
CONVERTERS: dict[tuple[str, str], tuple[int, ...]] = {
    ("", "Abs"): (6, 13),
    ("", "Acos"): (7,),
    ("", "Add"): (1, 6, 7, 13, 14),
    ("", "And"): (1, 7),
    ("", "ArgMax"): (11, 12, 13),
    ("", "ArgMin"): (11, 12, 13),
    ("", "Asin"): (7,),
    ("", "Atan"): (7,),
    ("", "AveragePool"): (7, 10, 11, 19),
    ("", "BatchNormalization"): (9, 14, 15),
    ("", "Cast"): (9, 13, 19, 21),
    ("", "Ceil"): (6, 13),
    ("", "Celu"): (12,),
    ("", "Clip"): (6, 11, 12, 13),
    ("", "Concat"): (4, 11, 13),
    ("", "Constant"): (9, 11, 12, 13, 19, 21),
    ("", "ConstantOfShape"): (9, 20, 21),
    ("", "Conv"): (1, 11),
    ("", "ConvTranspose"): (1, 11),
    ("", "Cos"): (7,),
    ("", "CumSum"): (11, 14),
    ("", "DepthToSpace"): (11, 13),
    ("", "Div"): (1, 6, 7, 13, 14),
    ("", "Dropout"): (10, 12, 13),
    ("", "Einsum"): (12,),
    ("", "Elu"): (6,),
    ("", "Equal"): (7, 11, 13, 19),
    ("", "Erf"): (9, 13),
    ("", "Exp"): (6, 13),
    ("", "Expand"): (8, 13),
    ("", "EyeLike"): (9,),
    ("", "Flatten"): (9, 11, 13, 21),
    ("", "Floor"): (6, 13),
    ("", "Gather"): (1, 11, 13),
    ("", "GatherElements"): (11, 13),
    ("", "GatherND"): (11, 12, 13),
    ("", "Gelu"): (20,),
    ("", "Gemm"): (9, 11, 13),
    ("", "GlobalAveragePool"): (1,),
    ("", "Greater"): (7, 9, 13),
    ("", "GreaterOrEqual"): (12, 16),
    ("", "HardSigmoid"): (1, 6),
    ("", "HardSwish"): (14,),
    ("", "Identity"): (1, 13, 14, 16, 19, 21),
    ("", "InstanceNormalization"): (1, 6),
    ("", "IsInf"): (10, 20),
    ("", "IsNaN"): (13, 20),
    ("", "LRN"): (1, 13),
    ("", "LayerNormalization"): (17,),
    ("", "LeakyRelu"): (1, 6, 16),
    ("", "Less"): (7, 9, 13),
    ("", "LessOrEqual"): (12, 16),
    ("", "Log"): (6, 13),
    ("", "LogSoftmax"): (1, 11, 13),
    ("", "MatMul"): (1, 9, 13),
    ("", "Max"): (8, 12, 13),
    ("", "MaxPool"): (8, 10, 11, 12),
    ("", "Mean"): (8, 13),
    ("", "Min"): (8, 12, 13),
    ("", "Mish"): (18,),
    ("", "Mod"): (10, 13),
    ("", "Mul"): (1, 6, 7, 13, 14),
    ("", "Neg"): (1, 6, 13),
    ("", "NonMaxSuppression"): (10, 11),
    ("", "NonZero"): (13,),
    ("", "Not"): (1,),
    ("", "Or"): (1, 7),
    ("", "PRelu"): (7, 9, 16),
    ("", "Pad"): (2, 11, 13, 18, 19, 21),
    ("", "Pow"): (1, 7, 12, 13, 15),
    ("", "Range"): (11,),
    ("", "Reciprocal"): (1, 6, 13),
    ("", "ReduceL1"): (1, 11, 13, 18),
    ("", "ReduceL2"): (1, 11, 13, 18),
    ("", "ReduceLogSum"): (1, 11, 13, 18),
    ("", "ReduceLogSumExp"): (1, 11, 13, 18),
    ("", "ReduceMax"): (1, 11, 12, 13, 18, 20),
    ("", "ReduceMean"): (1, 11, 13, 18),
    ("", "ReduceMin"): (1, 11, 12, 13, 18, 20),
    ("", "ReduceProd"): (1, 11, 13, 18),
    ("", "ReduceSum"): (1, 11, 13),
    ("", "ReduceSumSquare"): (1, 11, 13, 18),
    ("", "Relu"): (6, 13, 14),
    ("", "Reshape"): (5, 13, 14, 19, 21),
    ("", "Resize"): (10, 11, 13, 18, 19),
    ("", "RoiAlign"): (10, 16),
    ("", "Round"): (11,),
    ("", "ScatterND"): (11, 13, 16, 18),
    ("", "Selu"): (6,),
    ("", "Shape"): (1, 13, 15, 19, 21),
    ("", "Sigmoid"): (1, 6, 13),
    ("", "Sign"): (9, 13),
    ("", "Sin"): (7,),
    ("", "Slice"): (9, 10, 11, 13),
    ("", "Softmax"): (1, 11, 13),
    ("", "Softplus"): (1,),
    ("", "Softsign"): (1,),
    ("", "Split"): (2, 11, 13, 18),
    ("", "Sqrt"): (1, 6, 13),
    ("", "Squeeze"): (1, 11, 13, 21),
    ("", "Sub"): (1, 6, 7, 13, 14),
    ("", "Sum"): (8, 13),
    ("", "Tan"): (7,),
    ("", "Tanh"): (6, 13),
    ("", "Tile"): (6, 13),
    ("", "TopK"): (1, 10, 11),
    ("", "Transpose"): (1, 13, 21),
    ("", "Trilu"): (14,),
    ("", "Unsqueeze"): (1, 11, 13, 21),
    ("", "Where"): (9, 16),
    ("", "Xor"): (1, 7),
}


def has_converter(op_type: str, opset: int, domain: str = "") -> bool:
    """Whether ``op_type`` at model opset ``opset`` converts, looked up the way onnx2torch's
    ``get_converter`` does: through the schema version in force at that opset."""
    version = opset
    with contextlib.suppress(RuntimeError, defs.SchemaError):
        version = defs.get_schema(op_type, max_inclusive_version=opset, domain=domain).since_version
    return version in CONVERTERS.get((domain, op_type), ())
