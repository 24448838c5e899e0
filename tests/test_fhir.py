"""Patient context from FHIR R4: a Synthea-style bundle (built with fhir.resources), and the
REST client against a loopback FHIR server serving the same resources (no real FHIR server
installs from the registries here: HAPI needs a Java build of its JPA starter)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from fhir_fixtures import MRN, synthea_bundle
from fhir_fixtures import serve_fhir as _serve
from medgem.errors import PacsError
from medgem.inputs.fhir import load_context, read_bundle, read_patient


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fhir") / "bundle.json"
    path.write_text(json.dumps(synthea_bundle()))
    return path


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[str]:
    yield from _serve(synthea_bundle(), token="fhir-ok")


def test_a_bundle_renders_cited_lines_without_names_or_identifiers(bundle_file: Path) -> None:
    lines = read_bundle(bundle_file)
    assert len(lines) == 1 + 3 + 2 + 2 + 40
    context = load_context(str(bundle_file), "Is the emphysema worse?", budget_chars=100_000)
    assert context.total == 48 and len(context.cited) == 48  # everything fits
    text = context.text
    assert "[Patient/p1] gender female, born 1951-04-17" in text
    assert "[Condition/c-copd] 2015-03-02: Chronic obstructive pulmonary disease [Active]" in text
    assert "[DiagnosticReport/r-ct] 2023-03-14: CT Chest without contrast: Centrilobular emphysema, upper lobes. [final]" in text
    assert "[MedicationRequest/m-tiotropium] 2015-03-10: Tiotropium 18 MCG inhalation capsule; one capsule daily [active]" in text
    assert "[Observation/o-1] 2010-02-01: Oxygen saturation: 91 % [final]" in text
    for secret in (MRN, "Quincy", "Jane", "Elm Street", "Springfield"):
        assert secret not in text
    # sections in the notebook order, each oldest first
    assert text.index("Patient:") < text.index("Conditions:") < text.index("Medications:") < \
        text.index("Observations:") < text.index("Reports:")
    assert text.index("r-cxr") < text.index("r-ct")
    prompt = context.prompt("Is the emphysema worse?")
    assert prompt.endswith("\n\nIs the emphysema worse?") and "48 of 48 resources" in prompt


def test_a_small_budget_keeps_the_most_relevant_first(bundle_file: Path) -> None:
    context = load_context(str(bundle_file), "Is the emphysema worse than on the last CT?", budget_chars=600)
    assert len(context.text) <= 600 + 200  # section headings on top of the lines' budget
    assert context.cited[0] == "Patient/p1"
    assert context.cited[1] == "DiagnosticReport/r-ct"  # shares "emphysema" with the question
    assert "Condition/c-copd" in context.cited
    assert "Condition/c-ankle" not in context.cited  # resolved, unrelated: trimmed
    assert sum(ref.startswith("Observation/") for ref in context.cited) < 40
    assert set(context.cited) == {line.split("]")[0].lstrip("- [") for line in context.text.splitlines()
                                  if line.startswith("- [")}


def test_what_is_not_fhir_is_one_line(tmp_path: Path) -> None:
    cases = {"not-json.json": "this is not json", "not-fhir.json": json.dumps({"hello": 1}),
             "bad-kind.json": json.dumps({"resourceType": "Nonsense"}),
             "bad-field.json": json.dumps({"resourceType": "Bundle", "type": "collection",
                                           "entry": [{"resource": {"resourceType": "Patient", "gender": 7}}]})}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(PacsError, match="is not a FHIR R4 record") as caught:
            read_bundle(tmp_path / name)
        assert "\n" not in str(caught.value)
    with pytest.raises(PacsError, match="no FHIR record"):
        read_bundle(tmp_path / "missing.json")


def test_the_rest_client_reads_the_same_record_page_by_page(fhir_server: str, bundle_file: Path) -> None:
    remote = read_patient(f"{fhir_server}/Patient/p1", token="fhir-ok")
    local = read_bundle(bundle_file)
    assert sorted(remote, key=lambda x: x.ref) == sorted(local, key=lambda x: x.ref)
    with pytest.raises(PacsError, match=r"refused medgem \(401\).*--fhir-token"):
        read_patient(f"{fhir_server}/Patient/p1", token="wrong")
    with pytest.raises(PacsError, match="no such patient"):
        read_patient(f"{fhir_server}/Patient/nobody", token="fhir-ok")
    with pytest.raises(PacsError, match="cannot reach"):
        read_patient("http://127.0.0.1:9/fhir/Patient/p1", timeout=2)
    with pytest.raises(PacsError, match="not a FHIR Patient URL"):
        read_patient(f"{fhir_server}/Observation/o-1")


def test_the_rest_client_follows_next_links(bundle_file: Path) -> None:
    big = synthea_bundle(observations=250)  # three pages of 100
    for base in _serve(big):
        lines = read_patient(f"{base}/Patient/p1")
        assert sum(line.kind == "Observation" for line in lines) == 250


def test_cli_ask_with_fhir_cites_the_resources_in_the_audit_trail(
        bundle_file: Path, tiny_text_checkpoint: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    result = run_cli("ask", "Is the COPD getting worse?", "--fhir", str(bundle_file), "--fhir-budget", "150",
                     "--model", str(tiny_text_checkpoint), "--max-new-tokens", "2", "--no-server",
                     "--audit-db", str(audit))
    assert result.returncode == 0, result.stderr
    assert "FHIR resources sent (Patient/p1, " in result.stderr
    from medgem.audit import open_store

    store = open_store(audit)
    (answer,) = store.records(kind="answer")
    (cited,) = store.children(answer.id)
    assert cited.kind == "fhir_context" and cited.body["total"] == 48
    assert "Condition/c-copd" in cited.body["cited"] and cited.body["source"] == "bundle.json"
    bad = tmp_path / "x.json"
    bad.write_text('{"resourceType": "Nonsense"}')
    refused = run_cli("ask", "Anything?", "--fhir", str(bad), "--model", str(tiny_text_checkpoint),
                      "--no-server", "--audit-db", str(audit))
    assert refused.returncode == 1 and "not a FHIR R4 record" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
