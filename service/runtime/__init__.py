"""What runs the model for the API: image decoding, the batcher, zero-shot classifiers."""
