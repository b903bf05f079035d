"""Writing exports: a training checkpoint -> an export directory (checkpoint.py), its
towers as ONNX graphs (onnx.py, graphs.py), and `contrastive export` (cli.py).

The format itself, and reading it, live in training.encoders.exported.
"""
