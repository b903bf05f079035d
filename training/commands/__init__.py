"""The training half's commands: one module per `contrastive COMMAND`, each with
`add_arguments(parser)` and `run(args) -> int`, registered in training.cli's table.

    train    contrastive train     (also `python -m training train`)
    export   contrastive export
    eval     contrastive eval  (its flags and their checks: eval_options)
    demo     contrastive demo
    plot     contrastive plot

A command parses, reports and exits; the work it starts lives in the package it names
(training.engine, training.export, training.evaluate, training.demo).
"""
