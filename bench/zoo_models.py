"""The models of the zoo: built here from timm, torchvision, transformers and scikit-learn with
random weights (``pretrained=False``, transformers from config objects, nothing downloaded),
and exported the ways users export them.

Each torch model is written three times: ``dynamo-fixed`` (``torch.onnx.export(model, example,
dynamo=True)``, the batch baked in at 1, what most people do), ``dynamo-dynamic`` (the batch
axis declared dynamic) and ``torchscript`` (``dynamo=False``, the older exporter, batch 1).
scikit-learn models go through skl2onnx, with and without its ZipMap output.
Every model comes with a small generated dataset (``.npz``) of the right dtype and shape.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

SAMPLES = 64  # per dataset: one optimizer step per epoch at the default batch size
CLASSES = 10
SEQ = 16  # token sequence length
VOCAB = 128
EXPORTS = ("dynamo-fixed", "dynamo-dynamic", "torchscript")


@dataclass
class Inputs:
    """Example inputs of one model, by forward-argument name, and how to make a dataset."""

    names: list[str]
    sample: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape without batch, dtype)
    classes: int | None = CLASSES  # labels drawn in [0, classes); None: no labels (distillation)

    def example(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(a) for a in self.arrays(batch, seed=1).values())

    def arrays(self, n: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for name in self.names:
            shape, dtype = self.sample[name]
            if name == "attention_mask":
                out[name] = np.ones((n, *shape), dtype=np.int64)
            elif name == "token_type_ids":
                out[name] = np.zeros((n, *shape), dtype=np.int64)
            elif dtype == "int64":
                out[name] = rng.integers(1, VOCAB, size=(n, *shape), dtype=np.int64)
            else:
                out[name] = rng.standard_normal((n, *shape)).astype(np.float32)
        return out


@dataclass
class ZooModel:
    name: str
    source: str  # the library it comes from
    build: Callable[[], nn.Module]
    inputs: Inputs
    exports: tuple[str, ...] = EXPORTS
    notes: list[str] = field(default_factory=list)


def _image(size: int) -> Inputs:
    return Inputs(["x"], {"x": ((3, size, size), "float32")})


def _tokens(names: list[str], classes: int | None) -> Inputs:
    return Inputs(names, {n: ((SEQ,), "int64") for n in names}, classes)


class LogitsOf(nn.Module):
    """A transformers model returning its logits tensor, as users wrap one for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=CLASSES)

    return build


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)

    return build


def _hf(model_class: str, config_class: str, **config: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_class)(**config)
        return LogitsOf(getattr(transformers, model_class)(cfg).eval())

    return build


_BERT = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "num_labels": CLASSES,
}
_DISTILBERT = {
    "vocab_size": VOCAB,
    "dim": 32,
    "n_layers": 2,
    "n_heads": 2,
    "hidden_dim": 64,
    "max_position_embeddings": 64,
    "num_labels": CLASSES,
}
_GPT2 = {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, "pad_token_id": 0}
_VIT = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_labels": CLASSES,
}

TORCH_MODELS = [
    ZooModel("tv_resnet18", "torchvision", _tv("resnet18"), _image(32)),
    ZooModel("tv_mobilenet_v3_small", "torchvision", _tv("mobilenet_v3_small"), _image(32)),
    ZooModel("tv_squeezenet1_1", "torchvision", _tv("squeezenet1_1"), _image(64)),
    ZooModel("timm_resnet18", "timm", _timm("resnet18"), _image(32)),
    ZooModel("timm_mobilenetv3_small_100", "timm", _timm("mobilenetv3_small_100"), _image(32)),
    ZooModel("timm_efficientnet_b0", "timm", _timm("efficientnet_b0"), _image(32)),
    ZooModel("timm_regnetx_002", "timm", _timm("regnetx_002"), _image(32)),
    ZooModel("timm_convnext_atto", "timm", _timm("convnext_atto"), _image(32)),
    ZooModel("timm_vit_tiny_patch16_224", "timm", _timm("vit_tiny_patch16_224", img_size=32), _image(32)),
    ZooModel(
        "hf_bert_seqcls",
        "transformers",
        _hf("BertForSequenceClassification", "BertConfig", **_BERT),
        _tokens(["input_ids", "attention_mask", "token_type_ids"], CLASSES),
    ),
    ZooModel(
        "hf_distilbert_seqcls",
        "transformers",
        _hf("DistilBertForSequenceClassification", "DistilBertConfig", **_DISTILBERT),
        _tokens(["input_ids", "attention_mask"], CLASSES),
    ),
    ZooModel(
        "hf_gpt2_seqcls",
        "transformers",
        _hf("GPT2ForSequenceClassification", "GPT2Config", num_labels=CLASSES, **_GPT2),
        _tokens(["input_ids", "attention_mask"], CLASSES),
    ),
    ZooModel(
        "hf_gpt2_lm_tied",
        "transformers",
        _hf("GPT2LMHeadModel", "GPT2Config", tie_word_embeddings=True, **_GPT2),
        _tokens(["input_ids"], None),
    ),
    ZooModel(
        "hf_vit_imgcls",
        "transformers",
        _hf("ViTForImageClassification", "ViTConfig", **_VIT),
        Inputs(["pixel_values"], {"pixel_values": ((3, 32, 32), "float32")}),
    ),
]


class PixelLogits(nn.Module):
    """A transformers image model returning its logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def build_torch(model: ZooModel) -> nn.Module:
    torch.manual_seed(0)
    module = model.build()
    if model.name == "hf_vit_imgcls":
        module = PixelLogits(module.model)
    return module.eval()


def export_torch(model: ZooModel, kind: str, path: Path) -> Path:
    """Export ``model`` the way ``kind`` names; returns the .onnx path (external data beside it)."""
    module = build_torch(model)
    # torch.export specializes a dimension of size 1, so a dynamic batch is traced at 2
    example = model.inputs.example(2 if kind == "dynamo-dynamic" else 1)
    names = model.inputs.names
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = contextlib.ExitStack()
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    with quiet, torch.no_grad():
        if kind == "torchscript":
            torch.onnx.export(module, example, str(path), dynamo=False, input_names=names)
        else:
            dynamic = tuple({0: torch.export.Dim("batch", max=4096)} for _ in names)
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=True,
                input_names=names,
                dynamic_shapes=dynamic if kind == "dynamo-dynamic" else None,
            )
    return path


SKLEARN_MODELS = ["skl_mlp_zipmap", "skl_mlp_nozipmap"]


def export_sklearn(name: str, path: Path) -> Path:
    """An MLPClassifier trained on digits, converted with skl2onnx (ZipMap on or off)."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=60, random_state=0).fit(x, digits.target)
    options = {id(clf): {"zipmap": name == "skl_mlp_zipmap"}}
    onx = to_onnx(clf, x[:1], options=options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def sklearn_inputs() -> Inputs:
    return Inputs(["X"], {"X": ((64,), "float32")})


def sklearn_dataset(path: Path) -> Path:
    """Digits themselves: the scikit-learn model was trained on them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))[:SAMPLES]
    x = (digits.data[order] / 16.0).astype(np.float32)
    np.savez(path, x=x, X=x, y=digits.target[order].astype(np.int64))
    return path


def dataset(inputs: Inputs, path: Path) -> Path:
    """``x`` (the first input) plus every input under its own name, and ``y`` when labelled."""
    arrays = inputs.arrays(SAMPLES, seed=0)
    first = arrays[inputs.names[0]]
    extra: dict[str, np.ndarray] = {"x": first, **arrays}
    if inputs.classes is not None:
        extra["y"] = np.random.default_rng(1).integers(0, inputs.classes, size=SAMPLES).astype(np.int64)
    np.savez(path, **extra)  # type: ignore[arg-type]
    return path
