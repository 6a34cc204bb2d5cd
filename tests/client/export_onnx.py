"""Stand-in for a project's own export step: train a digits classifier, export it with dynamo."""

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()

torch.manual_seed(0)
x, y = load_digits(return_X_y=True)
x = torch.from_numpy((x / 16.0).astype(np.float32))
y = torch.from_numpy(y.astype(np.int64))
model = torch.nn.Sequential(
    torch.nn.Linear(64, 256),
    torch.nn.ReLU(),
    torch.nn.Linear(256, 256),
    torch.nn.ReLU(),
    torch.nn.Linear(256, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(20):
    for i in torch.randperm(len(x)).split(64):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        optimizer.step()
model.eval()
args.out.parent.mkdir(parents=True, exist_ok=True)
# torch 2.9+: dynamo=True is the default exporter; it writes the weights beside the graph
torch.onnx.export(model, (x[:2],), str(args.out), dynamo=True, dynamic_shapes=({0: "batch"},))
