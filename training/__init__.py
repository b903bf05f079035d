"""Contrastive training: methods, data, engine, evaluation and export.

Only `training.models` and `training.export` are imported by the service.
"""
