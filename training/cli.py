"""The command table behind `contrastive` and `python -m contrastkit.training`.

Each command is a row: its name, its one-line help, and the module that implements it
(`add_arguments(parser)` and `run(args) -> int`; `flags` may name a lighter home for the
first), or a nested table (`bench serve|...`).
Only the command being run is imported: `contrastive --help` lists the table without
importing torch, and `contrastive serve --help` imports only the serve module.
This module imports nothing heavy so the service's CLI can build on it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from contrastkit.training.catalog import method_names
from contrastkit.training.suggest import did_you_mean


@dataclass(frozen=True)
class Command:
    """One subcommand: `module` implements it, or `table` holds its own subcommands.

    `flags`, "module:function", adds the command's flags instead of `module`'s
    add_arguments, for a command whose module imports torch at its top (the benchmarks):
    its `--help` and a refused command line then import only that light module."""

    help: str
    module: str | None = None
    table: Mapping[str, Command] = field(default_factory=dict)
    flags: str | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's flags to `parser`, importing as little as the row allows."""
        where, _, name = (self.flags or f"{self.module}:add_arguments").partition(":")
        getattr(importlib.import_module(where), name)(parser)


# `python -m contrastkit.training ...` and the training half of `contrastive ...`.
TRAINING_COMMANDS: dict[str, Command] = {
    "train": Command(
        f"train a method: {', '.join(method_names())}", "contrastkit.training.commands.train"
    ),
    "export": Command(
        "write a run's checkpoint as an export directory", "contrastkit.training.commands.export"
    ),
    "eval": Command(
        "kNN, linear probe, zero-shot, few-shot, retrieval; compare models",
        "contrastkit.training.commands.eval",
    ),
    "demo": Command(
        "train a tiny SimCLR for a minute and draw what it learns",
        "contrastkit.training.commands.demo",
    ),
    "plot": Command(
        "draw a run's training curves (loss, lr, kNN) as a PNG",
        "contrastkit.training.commands.plot",
    ),
}


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose commands name the flag a mistyped one was meant to be.

    Plain argparse reports an unknown flag from the top parser ("contrastive: error:
    unrecognized arguments"), under the top usage, and a command's missing-positional
    error can hide it. A command's own parser (one without subcommands) checks the long
    flags it is given first, so the error shows that command's usage and a "did you mean"
    from its own flags. Subparsers are of this class too (add_subparsers' default)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if args is not None and self._subparsers is None:
            self._check_flags(args)
        return super().parse_known_args(args, namespace)

    def _check_flags(self, args: Sequence[str]) -> None:
        """self.error (exit 2) at the first `--flag` that is neither one of this parser's
        nor a prefix of one (argparse resolves abbreviations, or says they are ambiguous)."""
        flags = [f for f in self._option_string_actions if f.startswith("--")]
        for token in args:
            if token == "--":  # what follows is positional
                return
            flag = token.split("=", 1)[0]
            if not flag.startswith("--") or any(f.startswith(flag) for f in flags):
                continue
            self.error(f"unrecognized argument: {flag}{did_you_mean(flag, flags)}")


ALL = "*"  # build_parser(chosen=ALL): every command's flags (for tests and tools)


def _chosen(argv: Sequence[str], table: Mapping[str, Command]) -> str | None:
    """The first token of argv that names a command of `table` (None: no such token)."""
    for token in argv:
        if token in table:
            return token
        if not token.startswith("-"):
            return None  # an unknown command: argparse reports it
    return None


def add_table(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    table: Mapping[str, Command],
    argv: Sequence[str] | None,
    dest: str,
) -> None:
    """Register `table` on `sub`; only the command argv chooses (every one if argv is None)
    gets its flags, so only that command's module is imported."""
    chosen = None if argv is None else _chosen(argv, table)
    for name, command in table.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        if argv is not None and name != chosen:
            continue
        rest = None if argv is None else list(argv)[list(argv).index(name) + 1 :]
        if command.table:
            nested = p.add_subparsers(dest=f"{dest}_{name}", required=True, metavar="COMMAND")
            add_table(nested, command.table, rest, f"{dest}_{name}")
        else:
            command.add_arguments(p)


def build_parser(
    prog: str,
    description: str,
    table: Mapping[str, Command],
    argv: Sequence[str] | None = None,
) -> argparse.ArgumentParser:
    """The parser for `table`; with argv given, only its chosen command is filled in."""
    parser = CommandParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_table(sub, table, argv, "command")
    return parser


def run_parsed(
    args: argparse.Namespace, table: Mapping[str, Command], dest: str = "command"
) -> int:
    """Run the command `args` names (walking nested tables) and return its exit status."""
    command = table[getattr(args, dest)]
    if command.table:
        return run_parsed(args, command.table, f"{dest}_{getattr(args, dest)}")
    code: int = importlib.import_module(str(command.module)).run(args)
    return code


def dispatch(
    prog: str, description: str, table: Mapping[str, Command], argv: Sequence[str] | None
) -> int:
    """Parse argv (sys.argv[1:] when None) against `table` and run the chosen command."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog, description, table, tokens).parse_args(tokens)
    return run_parsed(args, table)


def build_training_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """`python -m contrastkit.training`'s parser (every command's flags when argv is None)."""
    return build_parser(
        "python -m contrastkit.training", "Contrastive training.", TRAINING_COMMANDS, argv
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m contrastkit.training COMMAND ...`: the training commands without the service."""
    return dispatch(
        "python -m contrastkit.training", "Contrastive training.", TRAINING_COMMANDS, argv
    )
