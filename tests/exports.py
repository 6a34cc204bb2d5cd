"""Models shaped the way people export theirs, built from plain torch and onnx (no timm,
transformers or skl2onnx): token ids with an attention mask, a classifier whose label output
comes before its scores (as skl2onnx writes one), a language model with a tied head."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from examples import digits

VOCAB, SEQ, HIDDEN = 50, 8, 32


def export(module: torch.nn.Module, example: tuple[torch.Tensor, ...], names: list[str], path: Path) -> Path:
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        torch.no_grad(),
    ):
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            dynamo=True,
            input_names=names,
            dynamic_shapes=tuple({0: torch.export.Dim("batch", max=4096)} for _ in names),
            external_data=False,
        )
    return path


class TokenClassifier(torch.nn.Module):
    """Token ids and an attention mask in, class scores out: embedding, masked mean, MLP."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(HIDDEN, 64), torch.nn.GELU(), torch.nn.Linear(64, HIDDEN)
        )
        self.norm = torch.nn.LayerNorm(HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        h = self.norm(h + self.mlp(h))
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * mask).sum(1) / mask.sum(1).clamp(min=1.0))


class TiedLM(torch.nn.Module):
    """A language model whose head reads the token embedding matrix (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(HIDDEN, 96), torch.nn.GELU(), torch.nn.Linear(96, HIDDEN)
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        h = h + self.mlp(h)
        return torch.nn.functional.linear(h, self.embed.weight)  # (batch, seq, vocab)


def tokens(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, SEQ)).astype(np.int64)
    mask = np.ones((n, SEQ), np.int64)
    mask[:, SEQ // 2 :] = rng.integers(0, 2, size=(n, SEQ - SEQ // 2))
    return ids, mask


def label_first_classifier(zipmap: bool) -> onnx.ModelProto:
    """An MLP classifier shaped as skl2onnx writes one: outputs ``label`` (int64) first, then
    the probabilities (a Softmax), or a ZipMap of them."""
    torch.manual_seed(0)
    mlp = digits.DigitsMLP(hidden=(32,))
    digits.train_digits(mlp, image=False, epochs=3)
    weights = [p.detach().numpy() for p in mlp.parameters()]
    w1, b1, w2, b2 = weights
    probs = "output_probability" if not zipmap else "probabilities"
    nodes = [
        helper.make_node("MatMul", ["X", "w1"], ["h0"], name="MatMul"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="Add"),
        helper.make_node("Relu", ["h1"], ["h2"], name="Relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"], name="MatMul1"),
        helper.make_node("Add", ["o0", "b2"], ["logits"], name="Add1"),
        helper.make_node("Softmax", ["logits"], [probs], name="Softmax", axis=-1),
        helper.make_node("ArgMax", [probs], ["label"], name="ArgMax", axis=1, keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])]
    opsets = [helper.make_opsetid("", 17)]
    if zipmap:
        nodes.append(
            helper.make_node(
                "ZipMap",
                [probs],
                ["output_probability"],
                name="ZipMap",
                domain="ai.onnx.ml",
                classlabels_int64s=list(range(10)),
            )
        )
        mapping = helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        )
        outputs.append(helper.make_value_info("output_probability", helper.make_sequence_type_proto(mapping)))
        opsets.append(helper.make_opsetid("ai.onnx.ml", 1))
    else:
        outputs.append(helper.make_tensor_value_info(probs, TensorProto.FLOAT, ["N", 10]))
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(w1.T), "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(np.ascontiguousarray(w2.T), "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.checker.check_model(model)
    return model
