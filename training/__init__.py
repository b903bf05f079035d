"""Contrastive training: methods, data, engine, evaluation and export.

The service imports only `contrastkit.training.encoders`, the model library (see README:
"Architecture").
"""
