"""Train a small digits MLP and export it the way users do (torch.onnx.export, dynamo=True).

python examples/digits_model.py OUT_DIR   # writes OUT_DIR/digits_mlp.onnx (+ .data)
"""

import sys
from pathlib import Path

import torch

from compressors import zoo


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build")
    model = zoo.DigitsMLP()
    accuracy = zoo.train_digits(model, image=False, epochs=15)
    path = zoo.export(model, torch.zeros(2, 64), out / "digits_mlp.onnx")
    print(f"trained digits MLP: held-out accuracy {accuracy:.4f}; exported to {path}")


if __name__ == "__main__":
    main()
