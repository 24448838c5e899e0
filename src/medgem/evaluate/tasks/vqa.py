"""Medical VQA: VQA-RAD and SLAKE. Closed questions by accuracy, open ones by tokenized F1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.extract import answer_part, extract_label, normalize_text
from medgem.evaluate.metrics import Interval, token_f1
from medgem.evaluate.tasks import base

YES_NO = ("yes", "no")


def _is_closed(answer: str, answer_type: str | None) -> bool:
    if answer_type:
        return answer_type.strip().upper() == "CLOSED"
    return normalize_text(answer) in YES_NO  # Hub copies drop answer_type


class VQATask(base.Task):
    """Tokenized F1 over all questions (the 4B card's metric), accuracy, closed/open split."""

    name = "vqa"
    description = "medical VQA (VQA-RAD, SLAKE): closed accuracy, open tokenized F1"
    primary_metric = "tokenized_f1"
    right_or_wrong = False

    def load(self, records: Sequence[Record], options: base.TaskOptions) -> base.LoadedData:
        items = []
        found: list[str | None] = []
        other_language = 0
        for record in records:
            data = {k.lower(): v for k, v in record.data.items()}
            language = data.get("q_lang")
            if language and str(language).lower() != options.language:
                other_language += 1
                continue
            found.append("slake" if "img_name" in data or "q_lang" in data
                         else "vqa-rad" if "image_name" in data else None)
            question = str(base.field_value(record, "question"))
            answer = str(base.field_value(record, "answer"))
            root = options.image_root or record.source.parent
            image = base.image_ref(base.field_value(record, "img_name", "image_name", "image", "image_path"),
                                   record, Path(root))
            closed = _is_closed(answer, data.get("answer_type"))
            if data.get("answer_type") and str(data["answer_type"]).upper() not in ("OPEN", "CLOSED"):
                raise row_error(record, f"answer_type {data['answer_type']!r} is not OPEN or CLOSED")
            hint = "Answer yes or no." if normalize_text(answer) in YES_NO else "Answer in a few words."
            items.append(base.EvalItem(
                base.item_id(record, "qid", "id"), str(record.source), record.row,
                f"{question.strip()}\n{hint}", answer, "closed" if closed else "open",
                images=(image,),
            ))
        skipped = {f"question language not '{options.language}'": other_language} if other_language else {}
        return base.LoadedData(items, base.most_common(found), skipped)

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        reference = str(item.reference)
        text = answer_part(reply)
        if normalize_text(reference) in YES_NO:
            label = extract_label(text, YES_NO)
            prediction = label if label is not None else text
            parsed = label is not None
        else:
            prediction, parsed = text, bool(normalize_text(text))
        correct = normalize_text(prediction) == normalize_text(reference)
        return base.Scored(prediction, parsed, correct, token_f1(prediction, reference))

    def metrics(self, items: Sequence[base.EvalItem], scored: Sequence[base.Scored]) -> dict[str, Interval]:
        result = {
            "tokenized_f1": base.mean_with_bootstrap([s.score for s in scored]),
            "accuracy": base.proportion([s.correct for s in scored]),
        }
        closed = [s.correct for i, s in zip(items, scored, strict=True) if i.category == "closed"]
        open_ = [s.score for i, s in zip(items, scored, strict=True) if i.category == "open"]
        if closed:
            result["closed_accuracy"] = base.proportion(closed)
        if open_:
            result["open_tokenized_f1"] = base.mean_with_bootstrap(open_)
        return result


TASK = VQATask()
