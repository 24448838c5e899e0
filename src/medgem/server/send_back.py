"""The server's ``--send-back``: answers to ``image_dicom`` questions stored on their PACS as
DICOM SR once a clinician reviewed them (``POST /api/reviews`` with accept or correct), or at
once as preliminary, unverified reports when the operator allowed unreviewed ones.

Server answers are not reviewed when they are made, so the study each answer saw is held here
until its review comes: the reference with the client's bearer token and the one source header
the report's patient and study modules come from (:meth:`FetchedStudy.compact`), in memory only
and for the last :data:`HELD` answers. After a restart, or for older answers, the review says
so and ``medgem audit send-back ID --study REF`` sends it from the command line. A failed send
never touches the answer or the review: it is recorded and said in the reply.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence

from medgem.audit import AuditRecord, AuditStore
from medgem.inputs.pacs import FetchedStudy
from medgem.sendback.reviewed import SOURCE, Decision, decide, send_sr, source_of
from medgem.sendback.send import SendBackRefused
from medgem.server import protocol as p

log = logging.getLogger("medgem.server")
HELD = 256  # answers whose study is held for their review (a header and a token each)


class SendBacks:
    """Studies held for their answers' reviews, and the sends themselves.

    Args:
        store: the server's audit store (reviews are read from it, sends recorded in it).
        unreviewed: the operator allowed sending answers before any review.
    """

    def __init__(self, store: AuditStore, *, unreviewed: bool) -> None:
        self.store = store
        self.unreviewed = unreviewed
        self._held: OrderedDict[str, FetchedStudy] = OrderedDict()
        self._lock = threading.Lock()

    def hold(self, answer_id: str, studies: Sequence[FetchedStudy]) -> None:
        """Keep the study an answer saw until its review (one study: a report is about one)."""
        if len(studies) != 1:
            return
        with self._lock:
            self._held[answer_id] = studies[0].compact()
            while len(self._held) > HELD:
                self._held.popitem(last=False)

    def send_unreviewed(self, answer_id: str, user: str) -> p.SendBack | None:
        """Send a just-made answer before any review (the operator allowed it); None when it
        was about no PACS study."""
        answer = self.store.get(answer_id)
        if answer is None or not self.unreviewed:
            return None
        return self._send(answer, user, "/v1/chat/completions", allow_unreviewed=True)

    def after_review(self, answer: AuditRecord, user: str) -> p.SendBack | None:
        """Send an answer its latest review accepted or corrected; say why not otherwise.
        None when the answer was about no PACS study (there is nothing to say)."""
        return self._send(answer, user, "/api/reviews", allow_unreviewed=False)

    def _send(self, answer: AuditRecord, user: str, endpoint: str, *,
              allow_unreviewed: bool) -> p.SendBack | None:
        try:
            source = source_of(self.store, answer)
        except SendBackRefused as exc:  # about no PACS study: nothing to say; several: why not
            about_pacs = any(r.kind == SOURCE for r in self.store.children(answer.id))
            return p.SendBack(status="not_sent", message=exc.message) if about_pacs else None
        try:
            decision: Decision = decide(self.store, answer, allow_unreviewed=allow_unreviewed)
        except SendBackRefused as exc:
            return p.SendBack(status="not_sent", message=exc.message)
        with self._lock:
            study = self._held.get(answer.id)
        if study is None:
            return p.SendBack(status="not_sent", pacs=str(source.body.get("pacs")), message=(
                "this server no longer holds the study the answer saw (it restarted since, or the "
                f"answer is older than the last {HELD}): send it with `medgem audit send-back "
                f"{answer.id} --study REF`"))
        where = study.reference.where
        try:
            _, record = send_sr(self.store, answer, study, decision, user=user, endpoint=endpoint)
        except Exception as exc:
            log.warning("sending answer %s back to %s failed: %s", answer.id, where, exc)
            return p.SendBack(status="failed", pacs=where, reviewed=decision.review_id is not None,
                              message=getattr(exc, "message", None) or str(exc),
                              record_id=getattr(exc, "audit_id", None))
        return p.SendBack(status="stored", pacs=where, reviewed=decision.review_id is not None,
                          record_id=record.id)
