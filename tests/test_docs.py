"""The README and the docs site stand on their own: links resolve inside the repository (and
inside docs/ for the site), the files they name exist, every page is in the site's nav,
every command has its manual page and its contract, the API reference names what exists,
and docs/architecture.md names every module of pipelines/, transforms/ and models/ and
nothing that is gone. `make test` also builds the site with `mkdocs build --strict`."""

import dataclasses
import functools
import json
import re
from pathlib import Path

import griffe
import pytest
import yaml

from pipelines.cli import COMMANDS, main
from transforms.dicom_io import Limits

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
REPO_PATH = re.compile(
    r"`((?:pipelines|transforms|models|deploy|scripts|tests|benchmarks)/[\w./-]*)`"
)
PACKAGES = ("pipelines", "transforms", "models")


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_docs_exist():
    names = {str(p.relative_to(DOCS)) for p in PAGES[1:]}
    assert {"architecture.md", "contracts.md", "deidentification.md", "failures.md"} <= names
    assert {
        "index.md",
        "commands/index.md",
        "dicomweb.md",
        "burned-in-text.md",
        "limits.md",
        "deploy.md",
        "runbook.md",
        "performance.md",
        "benchmarks.md",
        "development.md",
        "api/index.md",
    } <= names


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_links_resolve_inside_the_repository(page):
    text = page.read_text()
    assert "shared/" not in text and "DESIGN.md" not in text
    for target, _ in LINK.findall(text):
        if "://" in target:
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), target
        assert resolved.exists(), target
        if page != README:
            # The site is built from docs/ alone: a link out of it is broken there.
            assert resolved.is_relative_to(DOCS), f"{target}: outside docs/"


@pytest.mark.parametrize("page", PAGES[1:], ids=_page_id)
def test_named_files_exist(page):
    """Paths the docs name in the repository (the README also names output folders)."""
    for path in REPO_PATH.findall(page.read_text()):
        if "<" in path or "*" in path:
            continue
        assert (ROOT / path.rstrip("/")).exists(), path


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    return [p for value in nav.values() for p in _nav_pages(value)]


def test_every_page_is_in_the_nav_once():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    assert sorted(nav) == sorted(str(p.relative_to(DOCS)) for p in PAGES[1:])


def test_the_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first = text.split("\n## ", 1)[0]
    assert "make demo" in first and "make test" in first


def test_every_command_has_its_contract():
    contracts = (DOCS / "contracts.md").read_text()
    for command in COMMANDS:
        assert f"dicomflow {command}" in contracts, command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_its_manual_page(command):
    page = DOCS / "commands" / f"{command}.md"
    assert page.exists(), page
    assert f"dicomflow {command}" in page.read_text()
    # ... and the README's command table links to it.
    assert f"`dicomflow {command}`" in README.read_text()
    assert f"(docs/commands/{command}.md)" in README.read_text()


def test_the_keep_list_counts_are_the_generated_files():
    keeplist = json.loads((ROOT / "transforms" / "deid" / "deid_keeplist.json").read_text())
    keep = keeplist["keep"]
    code_strings = sum(1 for entry in keep.values() if entry["vr"] == "CS")
    page = " ".join((DOCS / "commands" / "deidentify.md").read_text().split())
    stated = f"keeps {len(keep)} attributes ({code_strings} CS), with term lists for "
    assert f"{stated}{len(keeplist['terms'])}." in page


def _size(value: float, name: str) -> str:
    if not name.endswith("_bytes"):
        return f"{value:g}"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value % size == 0:
            return f"{value // size} {unit}"
    return str(value)


def test_the_limits_table_gives_every_limit_with_its_default():
    rows = (DOCS / "limits.md").read_text()
    for field in dataclasses.fields(Limits):
        flag = "--" + field.name.replace("_", "-")
        default = _size(getattr(Limits(), field.name), field.name)
        assert f"| `{flag}` ({default}) |" in rows, (flag, default)


OPTION = re.compile(r"^\s+(--[a-z0-9-]+)", re.MULTILINE)
OPTION_PAGES = ("commands/index.md", "limits.md", "dicomweb.md", "dimse.md")


@pytest.mark.parametrize(
    "command",
    # train's module imports TensorFlow (seconds): make check leaves it to make test.
    [pytest.param(c, marks=pytest.mark.slow) if c == "train" else c for c in COMMANDS],
)
def test_every_option_of_a_command_is_in_the_docs(command, capsys):
    """Every option `dicomflow COMMAND --help` lists is in the command's manual page or on a
    page of the options several commands share (limits, DICOMweb, DIMSE, the manual's index)."""
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    options = set(OPTION.findall(capsys.readouterr().out)) - {"--help"}
    assert len(options) > 1, options
    text = "\n".join(
        (DOCS / page).read_text() for page in (f"commands/{command}.md", *OPTION_PAGES)
    )
    missing = sorted(o for o in options if not re.search(re.escape(o) + r"(?![\w-])", text))
    assert not missing, f"dicomflow {command}: {missing}"


# --- the API reference ----------------------------------------------------------------------

API_BLOCK = re.compile(r"^::: ([\w.]+)\n((?:    .*\n)*)", re.MULTILINE)


def _api_entries():
    for page in sorted((DOCS / "api").glob("*.md")):
        for module, options in API_BLOCK.findall(page.read_text()):
            members = re.findall(r"^        - (\w+)$", options, re.MULTILINE)
            yield pytest.param(module, members, id=module)


@functools.cache
def _package(name: str):
    return griffe.load(name, search_paths=[str(ROOT)])


@pytest.mark.parametrize(("module", "members"), list(_api_entries()))
def test_the_api_reference_names_what_exists(module, members):
    """mkdocstrings fails the strict build on a module that is gone but skips a listed
    member that is gone: the reference would quietly lose it."""
    loaded = _package(module.split(".")[0])[module.split(".", 1)[1]]
    missing = [m for m in members if m not in loaded.members]
    assert not missing, f"{module}: {missing}"


DOTTED = re.compile(r"`((?:pipelines|transforms|models)(?:\.\w+)+)[`(]")


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_python_names_in_the_docs_exist(page):
    """`transforms.convert.PrepareInstances`, `models.launchers.start_local(config)`: the
    module and the name in it are there (refactors move names)."""
    for dotted in DOTTED.findall(page.read_text()):
        parts = dotted.split(".")
        obj = _package(parts[0])
        for i, part in enumerate(parts[1:], 2):
            assert part in obj.members, f"{'.'.join(parts[:i])} is not there"
            obj = obj.members[part]


# --- docs/architecture.md names every module ------------------------------------------------

PY_NAME = re.compile(r"(?<![\w./{])((?:[\w-]+/)*(?:\{[\w,]+\}|\w+)\.py)\b")
PATH = re.compile(r"(?<![\w./])((?:pipelines|transforms|models|tests|deploy|scripts)/[\w/]*)")


def _modules() -> set[str]:
    return {
        str(p.relative_to(ROOT))
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__init__.py"
    }


@functools.cache
def _python_files() -> list[Path]:
    folders = (*PACKAGES, "tests", "scripts", "benchmarks", "deploy")
    found = [p for folder in folders for p in (ROOT / folder).rglob("*.py")]
    return [p.relative_to(ROOT) for p in [*found, *ROOT.glob("*.py")]]


def _expand(token: str) -> list[str]:
    braces = re.search(r"\{([\w,]+)\}", token)
    if not braces:
        return [token]
    head, tail = token[: braces.start()], token[braces.end() :]
    return [head + name + tail for name in braces.group(1).split(",")]


def _named_modules(text: str) -> tuple[set[str], list[str]]:
    """Every .py file a line names. A bare name (``flags.py``) is taken in the folder of the
    path named before it on its line (a table row names its folder first), else as the one
    module anywhere with that name."""
    every_py = _python_files()
    named, gone = set(), []
    for line in text.splitlines():
        for match in PY_NAME.finditer(line):
            for token in _expand(match.group(1)):
                if "/" in token:
                    if (ROOT / token).exists():
                        named.add(token)
                    else:
                        gone.append(f"{token} (no such file)")
                    continue
                before = PATH.findall(line[: match.start()])
                folder = before[-1] if before else ""
                folder = folder if folder.endswith("/") else str(Path(folder).parent)
                if before and (ROOT / folder / token).exists():
                    named.add(str(Path(folder) / token))
                    continue
                same = [str(p) for p in every_py if p.name == token]
                if len(same) == 1:
                    named.add(same[0])
                else:
                    gone.append(f"{token} ({'ambiguous' if same else 'no such file'})")
    return named, gone


def test_the_architecture_names_every_module_and_nothing_gone():
    named, gone = _named_modules((DOCS / "architecture.md").read_text())
    assert not gone, f"docs/architecture.md names what is not there: {gone}"
    missing = sorted(_modules() - named)
    assert not missing, f"docs/architecture.md leaves out: {missing}"


def test_the_architecture_check_sees_a_missing_and_a_gone_module():
    """The check itself: a row that drops a module, or names one that is gone, is caught."""
    text = (DOCS / "architecture.md").read_text()
    named, _ = _named_modules(text.replace("`scan.py`", "`the scan`"))
    assert "transforms/dicom_io/scan.py" not in named
    _, gone = _named_modules(text + "\n| `transforms/dicom_io/` | `nowhere.py` |\n")
    assert gone == ["nowhere.py (no such file)"]
    named, _ = _named_modules("| `pipelines/{synth,ingest}.py` | `flags.py` |")
    assert named == {"pipelines/synth.py", "pipelines/ingest.py", "pipelines/flags.py"}
