"""The page's PACS browser: the routes over real HTTP against the real Orthanc (DICOMweb and
DIMSE), the allowlist (403, nothing asked), a PACS that is down, slow or locked (502/504, one
line, bounded), the audit events (hashed UIDs; no name in the SQLite file), and the page in a
real chromium: search, choose a study or a series, ask, an answer with its caveat (saves
artifacts/pacs-page.png).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from medgem.audit import AuditStore, open_store
from medgem.inputs.pacs import is_allowed, parse_study_reference, uid_hash
from medgem.inputs.pacs.browse import StudyQuery, pacs_sources, person_name
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from pacs_fixtures import FrontOfOrthanc, Orthanc, free_port, serving_front
from test_server_helpers import audited, scripted_model, serve_in_thread

# The fixtures' patient as the browse list shows it (imaging_fixtures.PHI): never in the audit.
NAME_PARTS = ("Doe", "DOE", "Jane", "Quincy", "MRN-99887766", "ACC-5544332")


class _Front(FrontOfOrthanc):
    """A loopback front: ``/count`` answers 500 and counts (a PACS no one allowed), ``/slow``
    answers nothing for 5 s, ``/html`` a login page, ``/guarded`` wants ``Bearer good`` (else
    401) and forwards to the Orthanc."""

    hits: ClassVar[list[str]] = []
    tokens: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path.startswith("/count"):
            self.hits.append(self.path)
            self.send_response(500)
            self.end_headers()
        elif self.path.startswith("/slow"):
            threading.Event().wait(5)
        elif self.path.startswith("/guarded"):
            self._guarded()
        elif self.path.startswith("/html"):  # a login page where a PACS should be
            body = b"<html><body>Please sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _guarded(self) -> None:
        self.tokens.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != "Bearer good":
            self.send_response(401)
            self.end_headers()
            return
        self.forward(self.path.removeprefix("/guarded"))


@pytest.fixture(scope="module")
def front(orthanc: Orthanc) -> Iterator[str]:
    with serving_front(_Front, orthanc.url) as url:
        yield url


def test_a_query_becomes_the_matching_keys_and_the_audit_only_their_names() -> None:
    query = StudyQuery(patient_name=" doe ", patient_id="MRN-1", date_from="2023-03-01",
                       date_to="20230331", modality="ct")
    assert query.filters() == {"PatientName": "doe*", "PatientID": "MRN-1",
                               "StudyDate": "20230301-20230331", "ModalitiesInStudy": "CT"}
    assert query.audit_fields() == {"searched": ["ModalitiesInStudy", "PatientID", "PatientName", "StudyDate"],
                                    "limit": 50}
    assert StudyQuery(patient_name="DOE^J?NE").filters() == {"PatientName": "DOE^J?NE"}  # wildcards kept
    assert StudyQuery(date_from="20230314", date_to="2023-03-14").filters() == {"StudyDate": "20230314"}
    assert StudyQuery(date_from="20230314").filters() == {"StudyDate": "20230314-"}
    assert StudyQuery(date_to="20230314").filters() == {"StudyDate": "-20230314"}
    assert StudyQuery().filters() == {}
    assert person_name("DOE^JANE^Q^DR") == "DOE, JANE Q" and person_name("DOE") == "DOE"
    assert person_name(None) == "" and person_name("^JANE") == ", JANE"


def test_the_browsable_sources_are_the_allowlists_roots() -> None:
    sources = pacs_sources(["https://pacs.local/dicom-web/", "dimse://PACS@10.0.0.5:104",
                            "https://pacs.local/dicom-web/studies/1.2.3",  # one study: fetch only
                            "ftp://pacs.local/x", "dimse://nope"])
    assert [(s.entry, s.protocol, s.where) for s in sources] == [
        ("https://pacs.local/dicom-web", "dicomweb", "https://pacs.local/dicom-web"),
        ("dimse://PACS@10.0.0.5:104", "dimse", "PACS@10.0.0.5:104")]
    web, dimse = sources
    assert web.uri("1.2", "3.4") == "https://pacs.local/dicom-web/studies/1.2/series/3.4"
    assert dimse.uri("1.2", "3.4") == "dimse://PACS@10.0.0.5:104/1.2/3.4" and dimse.uri("1.2").endswith(":104/1.2")
    assert is_allowed(parse_study_reference(dimse.uri("1.2")), ["dimse://PACS@10.0.0.5:104"])


def _dimse_root(orthanc: Orthanc) -> str:
    return orthanc.dimse("").rstrip("/")


@pytest.fixture(scope="module")
def browsing(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AuditStore, Path]]:
    """A server that may browse the Orthanc over DICOMweb and DIMSE; its audit file."""
    path = tmp_path_factory.mktemp("audit") / "audit.sqlite"
    store = open_store(path)
    config = ServerConfig(allowed_pacs=(orthanc.dicomweb + "/", _dimse_root(orthanc)))
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        yield base, store, path


def _post(base: str, path: str, timeout: float = 60, **body: object) -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=timeout)


def _queries(store: AuditStore, after: int) -> list[Any]:
    return [r for r in store.records(kind="pacs_query") if r.seq > after]


def _last_seq(store: AuditStore) -> int:
    newest = list(store.records(newest_first=True, limit=1))
    return newest[0].seq if newest else 0


def test_sources_are_the_allowlist_and_a_server_without_one_browses_nothing(
        browsing: tuple[str, AuditStore, Path], orthanc: Orthanc) -> None:
    listed = httpx.get(browsing[0] + "/api/pacs/sources").json()["sources"]
    assert listed == [
        {"source": orthanc.dicomweb, "protocol": "dicomweb", "where": orthanc.dicomweb},
        {"source": _dimse_root(orthanc), "protocol": "dimse", "where": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"}]
    with serve_in_thread(create_app(ServerConfig(), audited(scripted_model(), open_store(":memory:")))) as base:
        assert httpx.get(base + "/api/pacs/sources").json() == {"sources": []}
        refused = _post(base, "/api/pacs/studies", source=orthanc.dicomweb)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "pacs_not_allowed"
        assert "browses no PACS" in refused.json()["error"]["message"]


def test_a_study_search_lists_what_a_pacs_browser_shows_and_audits_hashes(
        browsing: tuple[str, AuditStore, Path], orthanc: Orthanc) -> None:
    base, store, path = browsing
    before = _last_seq(store)
    found = _post(base, "/api/pacs/studies", source=orthanc.dicomweb, patient_name="doe")
    assert found.status_code == 200, found.text
    studies = {s["study_uid"]: s for s in found.json()["studies"]}
    study = studies[orthanc.uids["study"]]
    assert orthanc.uids["lone_sr_study"] in studies and orthanc.uids["cr_study"] not in studies
    assert study["patient_name"] == "Doe, Jane Quincy" and study["patient_id"] == "MRN-99887766"
    assert study["study_date"] == "2023-03-14" and {"CT", "MR"} <= set(study["modalities"])
    assert study["series_count"] == 3  # CT, MR and the SR
    assert study["dicom_source"] == f"{orthanc.dicomweb}/studies/{orthanc.uids['study']}"
    assert found.json()["truncated"] is False
    narrowed = _post(base, "/api/pacs/studies", source=orthanc.dicomweb, patient_name="doe",
                     modality="ct", date_from="2023-03-01", date_to="20230331").json()["studies"]
    assert [s["study_uid"] for s in narrowed] == [orthanc.uids["study"]]
    assert _post(base, "/api/pacs/studies", source=orthanc.dicomweb,
                 patient_id="NO-SUCH-ID").json()["studies"] == []
    cut = _post(base, "/api/pacs/studies", source=orthanc.dicomweb, limit=1).json()
    assert len(cut["studies"]) == 1 and cut["truncated"] is True
    events = _queries(store, before)
    assert len(events) == 4 and all(e.body["user"] == "local" and e.body["status"] == 200 for e in events)
    first = events[0].body
    assert first["endpoint"] == "/api/pacs/studies" and first["pacs"] == orthanc.dicomweb
    assert first["searched"] == ["PatientName"] and first["level"] == "study"
    assert uid_hash(orthanc.uids["study"]) in first["studies"] and first["matches"] == len(studies)
    assert events[1].body["searched"] == ["ModalitiesInStudy", "PatientName", "StudyDate"]
    assert orthanc.uids["study"] not in str([e.body for e in events])
    _assert_no_names(path)


def _assert_no_names(path: Path) -> None:
    """No part of the patient's name or ID anywhere in the audit store's files (WAL included)."""
    for part in path.parent.glob(path.name + "*"):
        data = part.read_bytes()
        for name in NAME_PARTS:
            assert name.encode() not in data, f"{name} is in {part.name}"


def test_a_studys_series_are_listed_with_which_can_be_asked_about(
        browsing: tuple[str, AuditStore, Path], orthanc: Orthanc) -> None:
    base, store, path = browsing
    before = _last_seq(store)
    listed = _post(base, "/api/pacs/series", source=orthanc.dicomweb, study_uid=orthanc.uids["study"])
    assert listed.status_code == 200, listed.text
    series = {s["series_uid"]: s for s in listed.json()["series"]}
    ct, mr, sr = (series[orthanc.uids[k]] for k in ("ct_series", "mr_series", "sr_series"))
    assert (ct["modality"], ct["body_part"], ct["instances"], ct["image"]) == ("CT", "CHEST", 120, True)
    assert (mr["modality"], mr["instances"], mr["image"]) == ("MR", 6, True)
    assert sr["modality"] == "SR" and sr["image"] is False
    assert mr["dicom_source"] == f"{orthanc.dicomweb}/studies/{orthanc.uids['study']}/series/{orthanc.uids['mr_series']}"
    unknown = _post(base, "/api/pacs/series", source=orthanc.dicomweb, study_uid="1.2.3.4")
    assert unknown.status_code == 400 and "is not on" in unknown.json()["error"]["message"]
    events = _queries(store, before)
    assert [e.body["status"] for e in events] == [200, 400]
    assert events[0].body["study"] == uid_hash(orthanc.uids["study"]) and events[0].body["level"] == "series"
    assert set(events[0].body["series"]) == {uid_hash(orthanc.uids[k]) for k in ("ct_series", "mr_series", "sr_series")}
    assert events[1].body["error"] == "pacs_error" and "1.2.3.4" not in str(events[1].body)
    _assert_no_names(path)


def test_dimse_peers_are_browsed_with_c_find(browsing: tuple[str, AuditStore, Path], orthanc: Orthanc) -> None:
    base, store, _ = browsing
    found = _post(base, "/api/pacs/studies", source=_dimse_root(orthanc), patient_name="DOE")
    assert found.status_code == 200, found.text
    study = next(s for s in found.json()["studies"] if s["study_uid"] == orthanc.uids["study"])
    assert study["patient_id"] == "MRN-99887766" and study["dicom_source"] == orthanc.dimse(orthanc.uids["study"])
    series = _post(base, "/api/pacs/series", source=_dimse_root(orthanc), study_uid=orthanc.uids["study"]).json()
    assert {s["modality"] for s in series["series"]} == {"CT", "MR", "SR"}
    assert next(store.records(kind="pacs_query", newest_first=True)).body["protocol"] == "dimse"


def test_bad_bodies_are_400s(browsing: tuple[str, AuditStore, Path], orthanc: Orthanc) -> None:
    base = browsing[0]
    for path, body, param in [
            ("/api/pacs/series", {"source": orthanc.dicomweb, "study_uid": "1.2.x"}, "study_uid"),
            ("/api/pacs/studies", {"source": orthanc.dicomweb, "date_from": "March"}, "date_from"),
            ("/api/pacs/studies", {"source": orthanc.dicomweb, "patient_name": "A\\B"}, "patient_name"),
            ("/api/pacs/studies", {"source": orthanc.dicomweb, "limit": 0}, "limit"),
            ("/api/pacs/studies", {"source": orthanc.dicomweb, "patient": "Doe"}, "patient")]:
        refused = httpx.post(base + path, json=body, timeout=30)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == param


def test_a_pacs_outside_the_allowlist_is_403_and_nothing_is_asked(
        orthanc: Orthanc, front: str, tmp_path: Path) -> None:
    store = open_store(tmp_path / "audit.sqlite")
    config = ServerConfig(allowed_pacs=(f"{front}/count/dicom-web",))
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        for source in (orthanc.dicomweb, f"{front}/count/dicom-web-evil", f"{front}/count",
                       _dimse_root(orthanc)):
            for path, body in (("/api/pacs/studies", {}), ("/api/pacs/series", {"study_uid": "1.2.3"})):
                refused = httpx.post(base + path, json={"source": source, **body}, timeout=30)
                assert refused.status_code == 403, refused.text
                error = refused.json()["error"]
                assert error["code"] == "pacs_not_allowed" and "--allow-pacs" in error["message"]
    assert _Front.hits == []  # nothing was asked of anyone
    assert list(store.records(kind="pacs_query")) == []


def test_a_pacs_down_slow_or_locked_is_a_gateway_error_in_one_line(
        orthanc_locked: Orthanc, front: str, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    slow, html = f"{front}/slow/dicom-web", f"{front}/html/dicom-web"
    store = open_store(tmp_path / "audit.sqlite")
    config = ServerConfig(allowed_pacs=(down, slow, html, orthanc_locked.dicomweb), pacs_browse_timeout_s=1.0)
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        for source, status, code, words in [
                (down, 502, "pacs_unavailable", "cannot reach"),
                (slow, 504, "pacs_timeout", "did not answer within 1 s"),
                (html, 502, "pacs_unavailable", "not a DICOMweb listing"),
                (orthanc_locked.dicomweb, 502, "pacs_refused", "refused medgem (401)")]:
            started = time.monotonic()
            answer = _post(base, "/api/pacs/studies", source=source, patient_name="doe", access_credential="wrong")
            assert time.monotonic() - started < 5  # bounded: one timeout, no retries
            assert answer.status_code == status, answer.text
            error = answer.json()["error"]
            assert error["code"] == code and words in error["message"] and "\n" not in error["message"]
        series = _post(base, "/api/pacs/series", source=orthanc_locked.dicomweb, study_uid="1.2.3")
        assert series.status_code == 502 and "PACS token" in series.json()["error"]["message"]
        login = _post(base, "/api/pacs/series", source=html, study_uid="1.2.3")
        assert login.status_code == 502 and "not a DICOMweb listing" in login.json()["error"]["message"]
        assert httpx.get(base + "/healthz").status_code == 200
    events = [r.body for r in store.records(kind="pacs_query")]
    assert [(e["status"], e["error"]) for e in events] == [
        (502, "pacs_unavailable"), (504, "pacs_timeout"), (502, "pacs_unavailable"), (502, "pacs_refused"),
        (502, "pacs_refused"), (502, "pacs_unavailable")]
    assert "wrong" not in str(events)  # the token is never recorded


def test_the_pacs_token_goes_with_the_search(orthanc: Orthanc, front: str) -> None:
    guarded = f"{front}/guarded/dicom-web"
    config = ServerConfig(allowed_pacs=(guarded,))
    with serve_in_thread(create_app(config, audited(scripted_model(), open_store(":memory:")))) as base:
        found = _post(base, "/api/pacs/studies", source=guarded, patient_name="doe", access_credential="good")
        assert found.status_code == 200, found.text
        study = next(s for s in found.json()["studies"] if s["study_uid"] == orthanc.uids["study"])
        assert study["dicom_source"].startswith(guarded + "/studies/")
        refused = _post(base, "/api/pacs/studies", source=guarded)
        assert refused.status_code == 502 and refused.json()["error"]["code"] == "pacs_refused"
    assert "Bearer good" in _Front.tokens and "" in _Front.tokens


def test_with_api_keys_browsing_needs_a_key(orthanc: Orthanc, tmp_path: Path) -> None:
    from medgem.server.auth import KeyStore

    key = KeyStore(tmp_path / "keys.json").add("ward")
    config = ServerConfig(allowed_pacs=(orthanc.dicomweb,), api_key_file=tmp_path / "keys.json")
    store = open_store(tmp_path / "audit.sqlite")
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        assert httpx.get(base + "/api/pacs/sources").status_code == 401
        assert _post(base, "/api/pacs/studies", source=orthanc.dicomweb).status_code == 401
        found = httpx.post(base + "/api/pacs/studies", json={"source": orthanc.dicomweb, "patient_name": "doe"},
                           headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert found.status_code == 200, found.text
    assert [r.body["user"] for r in store.records(kind="pacs_query")] == ["ward"]


# --- the page in a real browser ------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def _open(browser: Any, base: str) -> Any:
    page = browser.new_page(viewport={"width": 1360, "height": 1100})
    page.goto(base + "/")
    page.wait_for_selector("#model-name:not(:has-text('loading'))")
    return page


def _ask(page: Any, question: str) -> str:
    page.fill("#question", question)
    page.click("#ask")
    page.wait_for_selector("#review:not([hidden])", timeout=120_000)
    assert page.inner_text("#status") == "done", page.inner_text("#error")
    return str(page.inner_text("#answer"))


@pytest.mark.browser
def test_the_page_searches_the_pacs_chooses_a_series_and_asks(
        browser: Any, browsing: tuple[str, AuditStore, Path], orthanc: Orthanc) -> None:
    base, store, path = browsing
    page = _open(browser, base)
    page.wait_for_selector("#pacs-panel:not([hidden])")
    assert page.locator("#pacs-source option").count() == 2
    page.get_by_label("Patient name").fill("doe")
    page.click("#pacs-find")
    study_row = page.locator(f"#pacs-studies tr[data-study='{orthanc.uids['study']}']")
    study_row.wait_for()
    assert "Doe, Jane Quincy" in study_row.inner_text() and "2023-03-14" in study_row.inner_text()
    assert "MRN-99887766" in study_row.inner_text()
    before = _last_seq(store)
    study_row.get_by_role("button", name="Choose the study of Doe, Jane Quincy on 2023-03-14").click()
    mr_row = page.locator(f"#pacs-series tr[data-series='{orthanc.uids['mr_series']}']")
    mr_row.wait_for()
    sr_row = page.locator(f"#pacs-series tr[data-series='{orthanc.uids['sr_series']}']")
    assert sr_row.get_by_role("button", name="is not an image").is_disabled()  # a report: nothing to ask about
    assert "whole study" in page.inner_text("#pacs-chosen-text")
    mr_row.get_by_role("button").click()
    assert "MR" in page.inner_text("#pacs-chosen-text")
    answer = _ask(page, "Any lesion on this MR?")
    assert answer.startswith("Seen 6 image(s).")  # the MR series' six slices, fetched by the server
    caveat = page.locator("#answer-caveat")
    assert caveat.is_visible() and "must not directly inform diagnosis" in caveat.inner_text()
    assert "TEST MODEL" in page.inner_text("#answer-label")
    record_id = page.inner_text("#meta dd:last-of-type").strip()
    record = store.get(record_id)
    assert record is not None and record.body["endpoint"] == "/v1/chat/completions"
    fetches = [r.body for r in store.records(kind="pacs_fetch") if r.seq > before]
    assert [(f["study"], f["series"]) for f in fetches] == [
        (uid_hash(orthanc.uids["study"]), uid_hash(orthanc.uids["mr_series"]))]
    assert [r.body["level"] for r in store.records(kind="pacs_query") if r.seq > before] == ["series"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "pacs-page.png"), full_page=True)

    # A whole study with one image series: chosen as it is, asked about, the file input cleared.
    page.get_by_label("Patient name").fill("")
    page.click("#pacs-find")
    cr_row = page.locator(f"#pacs-studies tr[data-study='{orthanc.uids['cr_study']}']")
    cr_row.wait_for()
    cr_row.get_by_role("button").click()
    page.wait_for_selector("#pacs-series tbody tr")
    assert _ask(page, "Describe this radiograph.").startswith("Seen 1 image(s).")
    page.click("#pacs-clear")
    assert page.locator("#pacs-chosen").is_hidden()
    assert _ask(page, "What is a normal heart rate?").startswith("Seen 0 image(s).")
    page.close()
    _assert_no_names(path)


@pytest.mark.browser
def test_the_page_hides_the_panel_without_a_pacs_and_shows_a_pacs_error(
        browser: Any, orthanc_locked: Orthanc) -> None:
    with serve_in_thread(create_app(ServerConfig(), audited(scripted_model(), open_store(":memory:")))) as base:
        page = _open(browser, base)
        page.wait_for_timeout(300)  # the sources' answer has come by now
        assert page.locator("#pacs-panel").is_hidden()
        page.close()
    config = ServerConfig(allowed_pacs=(orthanc_locked.dicomweb,))
    with serve_in_thread(create_app(config, audited(scripted_model(), open_store(":memory:")))) as base:
        page = _open(browser, base)
        page.wait_for_selector("#pacs-panel:not([hidden])")
        page.get_by_label("PACS token").fill("wrong")
        page.click("#pacs-find")
        page.wait_for_selector("#pacs-error:not([hidden])")
        assert "refused medgem (401)" in page.inner_text("#pacs-error")
        page.close()
