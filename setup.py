"""The one computed part of the build: the import names, mapped onto the repository's folders.

The repository keeps `service/` and `training/` at its top; installed, they import as
`contrastkit.service` and `contrastkit.training`, so that a user's own `training/` or
`service/` folder (a common layout) never shadows ours. `contrastkit` itself is a namespace
package: it has no file of its own. Everything else is declared in pyproject.toml.
"""

from setuptools import find_packages, setup

PARENT = "contrastkit"
FOLDERS = ("service", "training")


def packages(folder: str) -> list[str]:
    """`folder` and its subpackages, named under PARENT (service.api -> contrastkit.service.api)."""
    return [f"{PARENT}.{name}" for name in find_packages(include=[folder, f"{folder}.*"])]


setup(
    packages=[name for folder in FOLDERS for name in packages(folder)],
    package_dir={f"{PARENT}.{folder}": folder for folder in FOLDERS},
)
