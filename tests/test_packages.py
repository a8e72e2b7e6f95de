"""The three top-level packages are this project's, and nobody else's (docs/architecture.md).

dicomflow installs ``pipelines``, ``transforms`` and ``models`` as top-level packages: generic
names that another distribution in the same environment could also install. These tests fail
when an import of one of them finds some other copy, or another installed distribution
claims the same name. The one-way import rule itself is checked by ``lint-imports``
(pyproject.toml [tool.importlinter]), which ``make test`` runs.
"""

import importlib
import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "transforms", "models")


@pytest.mark.parametrize("name", PACKAGES)
def test_the_package_is_this_projects(name):
    module = importlib.import_module(name)
    assert module.__file__ is not None, f"{name} is a namespace package, not this project's"
    assert Path(module.__file__).resolve().parent == ROOT / name


@pytest.mark.parametrize("name", PACKAGES)
def test_no_other_distribution_installs_the_name(name):
    owners = set(importlib.metadata.packages_distributions().get(name, []))
    assert owners <= {"dicomflow"}, f"{name} is also installed by {sorted(owners - {'dicomflow'})}"


def test_the_packages_are_the_ones_setup_installs():
    text = (ROOT / "setup.py").read_text()
    for name in PACKAGES:
        assert f'"{name}", "{name}.*"' in text
    assert sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()) == sorted(
        PACKAGES
    )
