"""contrastkit.training.catalog, the torch-free copy of the method registry's names and setting
keys, and the texts that list the methods: they take the list from it, or name no subset."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from contrastkit.training import catalog
from contrastkit.training.cli import TRAINING_COMMANDS
from contrastkit.training.config import ConfigError
from contrastkit.training.methods import METHODS, get_method, method_names

ROOT = Path(__file__).resolve().parents[2]


def test_the_catalog_equals_the_registry() -> None:
    """A new method file needs its row in contrastkit.training.catalog.METHOD_SETTINGS: this is
    it."""
    names = method_names()  # imports every method module: METHODS is complete
    registry = {
        name: tuple(f.name for f in dataclasses.fields(cls.Params))
        for name, cls in sorted(METHODS.items())
    }
    static = catalog.METHOD_SETTINGS
    assert static == registry, "\n".join(
        f"    {name!r}: {keys!r}," for name, keys in registry.items() if static.get(name) != keys
    )
    assert catalog.method_names() == names == sorted(METHODS)


def test_an_unknown_method_names_the_closest_and_every_one() -> None:
    with pytest.raises(ConfigError) as close:
        catalog.check_settings({}, "simclrr")
    assert str(close.value).startswith("unknown method 'simclrr' (did you mean simclr?); ")
    assert str(close.value).endswith(f"choose one of: {', '.join(method_names())}")
    with pytest.raises(ValueError, match="unknown method 'byl' \\(did you mean byol\\?\\)"):
        get_method("byl")  # the registry says the same
    with pytest.raises(ConfigError) as far:
        catalog.check_settings({}, "nope")
    assert "did you mean" not in str(far.value) and "choose one of: barlow" in str(far.value)


def test_an_unknown_setting_names_the_closest_key() -> None:
    with pytest.raises(ConfigError) as typo:
        catalog.check_settings({"temperatur": "0.2"}, "simclr")
    assert str(typo.value).startswith(
        "unknown setting 'temperatur' (did you mean temperature?); valid settings: "
    )
    with pytest.raises(ConfigError) as nested:
        catalog.check_settings({"method_params": {"queue_sise": 4}}, "moco")
    assert "unknown setting 'queue_sise' (did you mean queue_size?)" in str(nested.value)
    catalog.check_settings({"epochs": 1, "method_params": {"queue_size": 4}}, "moco")


def test_another_methods_setting_says_whose_it_is() -> None:
    with pytest.raises(ConfigError) as other:
        catalog.check_settings({"temperature": "0.2"}, "byol")
    message = str(other.value)
    assert message.startswith("setting 'temperature' belongs to moco, moco-tuned, simclr, swav")
    assert "not to byol; byol's own settings: base_momentum" in message
    # resuming, the checkpoint names the method: any method's key passes, a typo does not
    catalog.check_settings({"temperature": "0.2"}, None)
    with pytest.raises(ConfigError, match="did you mean temperature"):
        catalog.check_settings({"temperatre": "0.2"}, None)


def test_build_config_suggests_too() -> None:
    from contrastkit.training.config import build_config

    with pytest.raises(ConfigError, match="unknown setting 'epoch' \\(did you mean epochs\\?\\)"):
        build_config({"epoch": "2"}, get_method("simclr").Params)


def test_the_train_rows_help_lists_the_registry() -> None:
    assert TRAINING_COMMANDS["train"].help == f"train a method: {', '.join(method_names())}"


def _families(text: str) -> set[str]:
    """The methods `text` names, by family (moco-tuned is MoCo), case-insensitively."""
    families = {name.split("-")[0] for name in method_names()}
    return {f for f in families if re.search(rf"(?<![\w-]){f}(?![\w-])", text, flags=re.I)}


def test_the_package_description_names_every_method_or_none() -> None:
    description = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["description"]
    named = _families(description)
    assert named in (set(), {name.split("-")[0] for name in method_names()}), sorted(named)


def test_the_readme_lists_every_method_where_it_lists_them() -> None:
    """The guide's Training heading and the README's Training bullet name every method
    family."""
    readme = (ROOT / "README.md").read_text()
    guide = (ROOT / "docs" / "guide" / "training.md").read_text()
    heading = re.search(r"^# Training: (.+)$", guide, flags=re.M)
    layout = re.search(r"^- \*\*Training\*\* \(`training/`\): (.+?)\n- ", readme, flags=re.M | re.S)
    assert heading is not None and layout is not None
    every = {name.split("-")[0] for name in method_names()}
    assert _families(heading.group(1)) == every
    assert _families(layout.group(1)) == every


def test_families_are_found_by_name() -> None:
    assert _families("SimCLR, MoCo v2 and Barlow Twins; open_clip is not CLIP-trained") == {
        "simclr",
        "moco",
        "barlow",
    }
