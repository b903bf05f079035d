"""The training engine: the one loop every method runs in, and what the loop needs.

    trainer       Trainer: build a run from a TrainConfig, then step, log, evaluate, save
    checkpoint    the checkpoint schema (Checkpoint) and its atomic, checksummed files
    resume        which settings a resumed run may change; old checkpoints' defaults
    runstate      seeds, random-stream capture and restore (exact resume), the device
    optim         parameter groups, SGD / LARS / AdamW
    schedule      warm-up + cosine learning rate, linear or sqrt batch scaling
    pretrained    loading backbone weights to start from (--init-from)
    knn_monitor   kNN accuracy of the backbone during training (when the data has labels)
    metrics       metrics.jsonl and TensorBoard
    progress      the progress bar

Methods (contrastkit.training.methods) know nothing of this package: the engine calls them only
through the `Method` contract. Nothing is imported here, so `from contrastkit.training.engine.X`
loads only X.
"""
