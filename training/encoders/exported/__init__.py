"""The export directory: its one format (format.py) and the encoders it rebuilds
(load.py dispatches by family: trained.py for our runs, open_clip and timm folders;
onnx_runtime.py serves its ONNX graphs with onnxruntime).

Written by the trainer side (contrastkit.training.export), read here, so the service reads an export
without importing anything of the trainer.
"""
