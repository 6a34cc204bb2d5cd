"""Train a small digits MLP and export it the way users do (torch.onnx.export, dynamo=True).

python -m examples.digits_model OUT_DIR   # writes OUT_DIR/digits_mlp.onnx (+ .data)
"""

import sys
from pathlib import Path

import torch

from examples import digits


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build")
    model = digits.DigitsMLP()
    accuracy = digits.train_digits(model, image=False, epochs=15)
    path = digits.export(model, torch.zeros(2, 64), out / "digits_mlp.onnx")
    print(f"trained digits MLP: held-out accuracy {accuracy:.4f}; exported to {path}")


if __name__ == "__main__":
    main()
