"""MAC and parameter counts against hand-computed ones."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from compressors.onnx.inspection import analysis_shapes, inspect_model
from compressors.onnx.macs import count_macs, count_params
from tests import builders


def _macs(model) -> int:
    shapes, batch = analysis_shapes(model)
    return sum(count_macs(model, shapes).values()) // batch


def test_gemm_macs_are_k_times_n_per_sample() -> None:
    assert _macs(builders.gemm(64, 10)) == 64 * 10
    assert _macs(builders.gemm(64, 10, trans_b=1)) == 64 * 10


def test_matmul_macs_count_every_row_of_a_sequence() -> None:
    # (batch, 7, 32) @ (32, 20): 7 rows per sample
    assert _macs(builders.matmul(["batch", 7], 32, 20)) == 7 * 32 * 20


def test_conv_macs_follow_output_size_stride_padding_and_dilation() -> None:
    # 13×11 input, 3×5 kernel, stride (1,2), pads (0,2,1,2): out H = 13+1-3+1 = 12, W = (11+4-5)//2+1 = 6
    model = builders.conv(6, 10, (3, 5), (13, 11), strides=(1, 2), pads=(0, 2, 1, 2))
    assert _macs(model) == 12 * 6 * 10 * 6 * 3 * 5
    # dilation 2 on a 3×3 kernel spans 5×5: 9×9 input with pad 2 gives 9×9
    model = builders.conv(4, 8, (3, 3), (9, 9), pads=(2, 2, 2, 2), dilations=(2, 2))
    assert _macs(model) == 9 * 9 * 8 * 4 * 9


def test_depthwise_conv_macs_use_channels_per_group() -> None:
    model = builders.conv(8, 8, (3, 3), (9, 9), pads=(1, 1, 1, 1), group=8)
    assert _macs(model) == 9 * 9 * 8 * 1 * 9


def test_fixed_batch_is_divided_out() -> None:
    model = builders.matmul([4, 7], 32, 20)  # batch baked in as 4
    assert _macs(model) == 7 * 32 * 20


def test_params_count_float_initializers_and_nonzeros() -> None:
    model = builders.gemm(8, 4)
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[:2] = 0.0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    # an int64 shape constant is not a parameter
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    params, nonzeros = count_params(model)
    assert params == 8 * 4 + 4
    assert nonzeros == params - 2 * w.shape[1]


def test_inspect_lists_inputs_outputs_and_eligibility() -> None:
    depthwise = builders.conv(8, 8, (3, 3), (9, 9), pads=(1, 1, 1, 1), group=8)
    info = inspect_model(depthwise)
    assert info.inputs[0].shape == ["batch", 8, 9, 9]
    assert info.opset == builders.OPSET
    assert [layer.eligible for layer in info.layers] == [False]
    gemm = inspect_model(builders.gemm(64, 32))
    assert gemm.macs == 64 * 32 and gemm.params == 64 * 32 + 32
    assert [layer.eligible for layer in gemm.layers] == [True]


def test_conv_transpose_macs() -> None:
    w = np.ones((4, 6, 3, 3), np.float32)  # Cin × Cout × k × k
    node = helper.make_node("ConvTranspose", ["X", "W"], ["Y"], kernel_shape=[3, 3])
    model = builders._model(
        [node],
        [builders.value("X", ["batch", 4, 5, 5])],
        [builders.value("Y", ["batch", 6, 7, 7])],
        [numpy_helper.from_array(w, "W")],
    )
    assert _macs(model) == 5 * 5 * 4 * 6 * 9
