"""scripts/generate_deid_profile.py reads PS3.15 Table E.1-1 as the standard publishes it
(DocBook) and writes deid_profile.py: fed a table holding the committed profile's rows, in the
standard's column layout, it writes the committed file back."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from conftest import REPO
from medgem.inputs.deid_profile import PROFILE

SCRIPT = REPO / "scripts" / "generate_deid_profile.py"
COMMITTED = REPO / "src" / "medgem" / "inputs" / "deid_profile.py"
# Table E.1-1's columns, in the standard's order and spelling.
HEADER = ["Attribute Name", "Tag", "Retd. (from PS3.6)", "In Std. Comp. IOD (from PS3.3)",
          "Basic Prof.", "Rtn. Safe Priv. Opt.", "Rtn. UIDs Opt.", "Rtn. Dev. Id. Opt.",
          "Rtn. Inst. Id. Opt.", "Rtn. Pat. Chars. Opt.", "Rtn. Long. Full Dates Opt.",
          "Rtn. Long. Modif. Dates Opt.", "Clean Desc. Opt.", "Clean Struct. Cont. Opt.",
          "Clean Graph. Opt."]
OPTION_COLUMN = {"retain_uids": 6, "retain_device_identity": 7, "retain_institution_identity": 8,
                 "retain_patient_characteristics": 9, "retain_full_dates": 10,
                 "retain_modified_dates": 11, "clean_descriptors": 12,
                 "clean_structured_content": 13, "clean_graphics": 14}


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate_deid_profile", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(text: str) -> str:
    return f"<td><para>{escape(text)}</para></td>"


def _part15(rows: dict[str, tuple[str, dict[str, str]]], edition: str) -> str:
    from pydicom.datadict import tag_for_keyword

    body = []
    for keyword, (basic, options) in rows.items():
        overlay = {"OverlayData": "(60xx,3000)", "OverlayComments": "(60xx,4000)"}
        tag = tag_for_keyword(keyword)
        if keyword in overlay:  # a repeating group, as the standard writes it
            text = overlay[keyword]
        else:
            assert tag is not None, keyword
            text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        cells = [keyword, text, "N", "Y", basic, ""] + [""] * 9
        for option, action in options.items():
            cells[OPTION_COLUMN[option]] = action
        body.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
    # rows the generator must leave out: a pattern and a private-attribute rule
    body.append("<tr>" + "".join(_cell(c) for c in ["Curve Data", "(50xx,xxxx)", "Y", "N", "X",
                                                    "", "", "", "", "", "", "", "", "", "C"]) + "</tr>")
    head = "<tr>" + "".join(f"<th><para>{escape(h)}</para></th>" for h in HEADER) + "</tr>"
    return (f'<book xmlns="http://docbook.org/ns/docbook" xmlns:xl="http://www.w3.org/1999/xlink">'
            f"<subtitle>DICOM PS3.15 {edition} - Security and System Management Profiles</subtitle>"
            f'<table xml:id="table_E.1-1"><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
            "</table></book>")


def test_the_committed_profile_is_what_the_generator_writes(tmp_path: Path) -> None:
    source = tmp_path / "part15.xml"
    source.write_text(_part15(PROFILE, "2025"))
    out = tmp_path / "deid_profile.py"
    out.write_text(COMMITTED.read_text())
    done = subprocess.run([sys.executable, str(SCRIPT), str(source), "--out", str(out), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout
    assert "left out: Curve Data (50xx,xxxx): a pattern" in done.stderr


def test_a_changed_row_and_a_new_edition_are_written(tmp_path: Path) -> None:
    generator = _generator()
    rows = dict(PROFILE)
    rows["AccessionNumber"] = ("X", {"retain_uids": "K"})  # a made-up change, to see it land
    source = tmp_path / "part15.xml"
    source.write_text(_part15(rows, "2026a"))
    out = tmp_path / "deid_profile.py"
    out.write_text(COMMITTED.read_text())
    assert generator.main([str(source), "--out", str(out), "--check"]) == 1
    assert generator.main([str(source), "--out", str(out)]) == 0
    written = out.read_text()
    assert '"AccessionNumber": ("X", {"retain_uids": "K"}),' in written
    assert "(2026a edition) by\nscripts/generate_deid_profile.py" in written
    namespace: dict[str, object] = {}
    exec(compile(written, str(out), "exec"), namespace)
    assert namespace["PROFILE"] == rows
