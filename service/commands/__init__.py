"""The service's commands, one module each, named after the command: `contrastive serve` is
`serve`, `contrastive index add` is `index.add`. Each defines `add_arguments(parser)` and
`run(args) -> int`; service/cli.py's table lists them and imports only the one that runs.
(The benchmarks are commands too, in service/bench/.)
"""
