"""docs/ stands on its own: its links resolve inside the repository, the files it names
exist, and nothing points outside the repository for the design."""

import re
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
REPO_PATH = re.compile(
    r"`((?:pipelines|transforms|models|deploy|scripts|tests|benchmarks)/[\w./-]*)`"
)


def test_the_docs_exist():
    names = {p.name for p in PAGES}
    assert {"architecture.md", "contracts.md", "deidentification.md", "failures.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(page):
    text = page.read_text()
    assert "shared/" not in text and "DESIGN.md" not in text
    for target, _ in LINK.findall(text):
        if "://" in target:
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), target
        assert resolved.exists(), target


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: p.name)
def test_named_files_exist(page):
    """Paths the docs name in the repository (the README also names output folders)."""
    for path in REPO_PATH.findall(page.read_text()):
        if "<" in path or "*" in path:
            continue
        assert (ROOT / path.rstrip("/")).exists(), path


def test_every_command_has_its_contract():
    contracts = (ROOT / "docs" / "contracts.md").read_text()
    for command in COMMANDS:
        assert f"dicomflow {command}" in contracts, command
