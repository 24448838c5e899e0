"""Studies from the same real Orthanc over classic DIMSE (pynetdicom C-FIND + C-GET): the same
pixels and prompt as the local files, and refusals in one line."""

from __future__ import annotations

import numpy as np
import pytest

from medgem.errors import PacsError
from medgem.inputs import Inputs, read_inputs
from medgem.inputs.pacs import parse_study_reference
from medgem.request.compose import request_for_inputs
from medgem.request.request import TextPart
from pacs_fixtures import Orthanc, free_port


def _texts(inputs: Inputs, question: str) -> list[str]:
    request = request_for_inputs(question, inputs)
    return [p.text for m in request.messages for p in m.parts if isinstance(p, TextPart)]


def test_a_ct_study_over_dimse_matches_the_local_files(orthanc: Orthanc) -> None:
    question = "Is there a pneumothorax on this chest CT?"
    remote = read_inputs([parse_study_reference(orthanc.dimse(orthanc.uids["study"]))], question=question)
    local = read_inputs([orthanc.files["ct"][0].parent])
    assert len(remote.images) == 85
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(remote.images, local.images, strict=True))
    assert _texts(remote, question) == _texts(local, question)
    assert remote.items[0].metadata["sampled_indices"] == local.items[0].metadata["sampled_indices"]
    (study,) = remote.studies
    assert study.reference.protocol == "dimse" and len(study.instances) == 85
    assert study.total_instances == 120 and study.bytes_moved > 0


def test_a_series_and_an_instance_over_dimse(orthanc: Orthanc) -> None:
    uids = orthanc.uids
    mr = read_inputs([parse_study_reference(orthanc.dimse(f"{uids['study']}/{uids['mr_series']}"))])
    assert mr.items[0].modality == "MR" and len(mr.images) == 6
    cr = read_inputs([parse_study_reference(
        orthanc.dimse(f"{uids['cr_study']}/{uids['cr_series']}/{uids['cr_instance']}"))])
    local = read_inputs([orthanc.files["cr"][0]])
    assert np.array_equal(np.asarray(cr.images[0]), np.asarray(local.images[0]))


def test_dimse_refusals_are_one_line(orthanc: Orthanc) -> None:
    with pytest.raises(PacsError, match="is not on"):
        read_inputs([parse_study_reference(orthanc.dimse("1.2.3.4.5"))])
    with pytest.raises(PacsError, match="SR series, not images"):
        read_inputs([parse_study_reference(orthanc.dimse(f"{orthanc.uids['study']}/{orthanc.uids['sr_series']}"))])
    down = parse_study_reference(f"dimse://ORTHANC@127.0.0.1:{free_port()}/1.2.3").with_access(timeout=2)
    with pytest.raises(PacsError, match="could not be reached"):
        read_inputs([down])
    # an AE title Orthanc does not know may not query it
    stranger = parse_study_reference(orthanc.dimse(orthanc.uids["study"])).with_access(calling_ae="STRANGER")
    with pytest.raises(PacsError, match="dropped the C-FIND: it may not let AE title STRANGER query"):
        read_inputs([stranger], question="chest CT")
