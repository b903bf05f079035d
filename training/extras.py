"""The optional extras that training, evaluation and the demo import from, and the one line
a command says when one is missing.

The base install is the service: it asks for none of these (README "Install"). Each is
imported where it is used, never at a module's top, so that serving never loads them; a
command that needs one checks for it first (`require`), before it loads data or a model,
and stops with `needs scikit-learn: pip install 'contrastkit[train]'`.
"""

from __future__ import annotations

from importlib.util import find_spec

# import name -> (the distribution that provides it, the extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "sklearn": ("scikit-learn", "train"),
    "tensorboard": ("tensorboard", "train"),
    "skimage": ("scikit-image", "train"),
    "matplotlib": ("matplotlib", "demo"),
}


class MissingExtraError(RuntimeError):
    """A package of an optional extra is not installed; the message says which to install."""


def installed(module: str) -> bool:
    """Whether `module` (a top-level name) can be imported; it is not imported here."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module without a spec (None entry)
        return False


def install_hint(module: str, extra: str | None = None) -> str:
    """The hint for the import name `module`, as "needs scikit-learn: pip install
    'contrastkit[train]'" (`extra`: another extra that installs it too, e.g. demo)."""
    package, default = PACKAGES[module]
    return f"needs {package}: pip install 'contrastkit[{extra or default}]'"


def require(*modules: str, what: str = "", extra: str | None = None) -> None:
    """MissingExtraError naming the first of `modules` (import names of PACKAGES) that is
    not installed and the extra to install (`extra`, else the package's own); `what`
    starts the message (e.g. "--data digits")."""
    for module in modules:
        if not installed(module):
            raise MissingExtraError(f"{what} {install_hint(module, extra)}".strip())


def data_modules(spec: str) -> tuple[str, ...]:
    """The optional packages that `--data SPEC` reads with: scikit-learn for `digits`;
    scikit-image and scikit-learn for eval's `skimage-photos`; none for the others."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "digits" and not rest:
        return ("sklearn",)
    if kind == "skimage-photos" and not rest:
        return ("skimage", "sklearn")
    return ()


def require_data(spec: str) -> None:
    """MissingExtraError when `--data SPEC` needs a package that is not installed."""
    require(*data_modules(spec), what=f"--data {spec.strip()}")
