"""The training half's commands: one module per `contrastive COMMAND`, each with
`add_arguments(parser)` and `run(args) -> int`, registered in contrastkit.training.cli's table.

    train    contrastive train     (also `python -m contrastkit.training train`)
    export   contrastive export
    eval     contrastive eval  (its flags and their checks: eval_options)
    demo     contrastive demo
    plot     contrastive plot

A command parses, reports and exits; the work it starts lives in the package it names
(contrastkit.training.engine, contrastkit.training.export, contrastkit.training.evaluate,
contrastkit.training.demo).
"""
