"""`contrastive bench train` and `contrastive bench onnx`: the training pipeline's step
ratios and time to kNN (train.py, pipelines.py, peer.py, knn.py, report.py), and torch
against onnxruntime (onnx.py)."""
