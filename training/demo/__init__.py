"""The visual demo: `contrastive demo` and `contrastive plot RUN`.

`contrastive demo` trains a small SimCLR model on real data (scikit-learn's digits, or
Fashion-MNIST) for about a minute on a CPU, through the same `contrastive train` code
path as any run, and writes PNG figures plus summary.md / summary.json that show what
the loss does: positive and negative pairs, the role of the temperature, and how the
embedding space changes from the random initialisation to the trained encoder.
`contrastive plot RUN` draws the training curves of any run folder.

Modules: style (matplotlib set-up), model (rebuild a run's model before/after),
analysis (what is measured of each model), pairs, temperature, embeddings, curves (the
figures), pipeline (the demo's steps), figures (draws all five), summary (summary.md
and summary.json). The two commands are contrastkit.training.commands.demo and .plot.
matplotlib is imported only when a figure is drawn, so the CLI starts fast.
"""
