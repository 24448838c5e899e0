"""Write src/medgem/inputs/deid_profile.py from the DICOM standard's own PS3.15 (DocBook XML).

    curl -O https://dicom.nema.org/medical/dicom/current/source/docbook/part15/part15.xml
    python scripts/generate_deid_profile.py part15.xml            # rewrites deid_profile.py
    python scripts/generate_deid_profile.py part15.xml --check    # exit 1 if it would change

Reads Table E.1-1 (Application Level Confidentiality Profile Attributes): the columns are found
by their header text, so a new edition that reorders them still reads right. Rows whose tag is
a pattern (``(50xx,xxxx)``, ``(gggg,eeee) where gggg is odd``) are not keywords and are left out
(deid_profile.py's docstring says how medgem treats them); a tag pydicom does not know is
reported and left out. The edition is taken from the document's own title.
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

DOCBOOK = "{http://docbook.org/ns/docbook}"
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
TABLE_ID = "table_E.1-1"
OUT = Path(__file__).resolve().parents[1] / "src" / "medgem" / "inputs" / "deid_profile.py"

#: header text (lower case, dots and spaces dropped) -> medgem's name for that column.
COLUMNS = {
    "tag": "tag",
    "basicprof": "basic",
    "rtnuidsopt": "retain_uids",
    "rtndevidopt": "retain_device_identity",
    "rtninstidopt": "retain_institution_identity",
    "rtnpatcharsopt": "retain_patient_characteristics",
    "rtnlongfulldatesopt": "retain_full_dates",
    "rtnlongmodifdatesopt": "retain_modified_dates",
    "cleandescopt": "clean_descriptors",
    "cleanstructcontopt": "clean_structured_content",
    "cleangraphopt": "clean_graphics",
}
_TAG = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")
_REPEATING = re.compile(r"^\(([0-9A-F]{2})XX,([0-9A-F]{4})\)$")  # (60xx,4000): overlay planes


def _text(cell: ET.Element) -> str:
    return " ".join("".join(cell.itertext()).split())


def _column(title: str) -> str | None:
    return COLUMNS.get(re.sub(r"[.\s]", "", title.lower()))


def edition(root: ET.Element) -> str:
    """The edition the document names, e.g. "2025b" from "DICOM PS3.15 2025b - ..."."""
    for element in root.iter():
        found = re.search(r"PS3\.15 (\d{4}[a-z]?)", element.text or "")
        if found:
            return found.group(1)
    raise SystemExit("no 'PS3.15 <edition>' title in the document: is it part15.xml?")


def read_table(root: ET.Element) -> tuple[dict[str, tuple[str, dict[str, str]]], list[str]]:
    """(keyword -> (basic action, {option: action}), the rows left out and why)."""
    from pydicom.datadict import RepeatersDictionary, keyword_for_tag

    table = next((t for t in root.iter(f"{DOCBOOK}table") if t.get(XML_ID) == TABLE_ID), None)
    if table is None:
        raise SystemExit(f"no {TABLE_ID} in the document")
    header = [_column(_text(th)) for th in table.iter(f"{DOCBOOK}th")]
    profile: dict[str, tuple[str, dict[str, str]]] = {}
    skipped: list[str] = []
    for row in table.iter(f"{DOCBOOK}tr"):
        cells = [_text(td) for td in row.findall(f"{DOCBOOK}td")]
        if not cells:
            continue  # the header row
        values = {name: cell for name, cell in zip(header, cells, strict=False) if name}
        text = values.get("tag", "").upper()
        tag, repeating = _TAG.match(text), _REPEATING.match(text)
        if tag is not None:
            keyword = keyword_for_tag(int(tag.group(1) + tag.group(2), 16))
        elif repeating is not None and f"{repeating.group(1)}xx{repeating.group(2)}" in RepeatersDictionary:
            keyword = RepeatersDictionary[f"{repeating.group(1)}xx{repeating.group(2)}"][4]
        else:
            skipped.append(f"{cells[0]} {values.get('tag', '')}: a pattern, not one attribute")
            continue
        if not keyword:
            skipped.append(f"{cells[0]} {values['tag']}: not in pydicom's dictionary")
            continue
        options = {name: action for name, action in values.items()
                   if name not in ("tag", "basic") and action}
        profile[keyword] = (values["basic"], options)
    return profile, skipped


def render(profile: dict[str, tuple[str, dict[str, str]]], source_edition: str, template: str) -> str:
    """deid_profile.py: the committed module's head (docstring, PROFILE_OPTIONS) with the edition
    named, then the PROFILE table in keyword order."""
    head = template[:template.index("#: keyword -> (basic profile action")]
    head = re.sub(r"Generated from the standard's table \([^)]*\)( by\s+scripts/generate_deid_profile\.py)?",
                  f"Generated from the standard's table ({source_edition} edition) by\n"
                  "scripts/generate_deid_profile.py", head, count=1)
    lines = ["#: keyword -> (basic profile action, {profile option: action under that option}).",
             "PROFILE: dict[str, tuple[str, dict[str, str]]] = {"]
    for keyword in sorted(profile):
        basic, options = profile[keyword]
        inner = ", ".join(f'"{name}": "{options[name]}"' for name in sorted(options))
        lines.append(f'    "{keyword}": ("{basic}", {{{inner}}}),')
    return head + "\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part15", type=Path, help="the standard's part15.xml (DocBook)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file would change")
    args = parser.parse_args(argv)
    root = ET.parse(args.part15).getroot()
    profile, skipped = read_table(root)
    text = render(profile, edition(root), args.out.read_text())
    for line in skipped:
        print(f"left out: {line}", file=sys.stderr)
    if args.check:
        same = text == args.out.read_text()
        print(f"{args.out}: {'up to date' if same else 'differs from the standard'}")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"{args.out}: {len(profile)} attributes ({len(skipped)} rows left out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
