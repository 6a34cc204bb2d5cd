"""The ONNX layer: graph reading and surgery, layers, MACs, ranks, factorization, channel
removal, sparsity, onnxruntime measurements. Nothing here imports torch."""
