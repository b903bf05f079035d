"""Defaults of the evaluation tasks that `contrastive eval --help` shows, in a module that
imports nothing (the tasks themselves need torch; the help does not)."""

# Few-shot has too few examples to hold out a validation split, so its penalty is fixed.
# 1e-3 was best, or within 0.035 of the best, of 1e-5..1e-1 at 1, 5 and 10 shots on three
# feature sets (the built-in model on digits and on Fashion-MNIST, a 3-step SimCLR run on
# digits); stronger penalties underfit 10 shots; weaker ones gained at most 0.033.
FEWSHOT_L2 = 1e-3
