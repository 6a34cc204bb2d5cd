"""Retraining on the user's own graph: ONNX to torch and back, weight views, the training
loop, and the steps retraining methods share."""
