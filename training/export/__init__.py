"""Writing exports: a training checkpoint -> an export directory (build.py), and its
towers as ONNX graphs (onnx.py, graphs.py). `contrastive export` is
contrastkit.training.commands.export.

The format itself, and reading it, live in contrastkit.training.encoders.exported.
"""
