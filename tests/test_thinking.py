from __future__ import annotations

import pytest

from medgem.request.thinking import ThinkingSplitter, split_thinking

OUTPUT = "<unused94>thought\nThe patient has fever.\nConsider CAP.<unused95>Bacterial pneumonia is likely."


def stream_split(text: str, size: int) -> tuple[str, str]:
    splitter = ThinkingSplitter()
    pieces = []
    for start in range(0, len(text), size):
        pieces += list(splitter.feed(text[start : start + size]))
    pieces += list(splitter.finish())
    thinking = "".join(p.text for p in pieces if p.kind == "thinking")
    answer = "".join(p.text for p in pieces if p.kind == "answer")
    return thinking.strip(), answer.strip()


def test_split_whole_output() -> None:
    assert split_thinking(OUTPUT) == (
        "The patient has fever.\nConsider CAP.",
        "Bacterial pneumonia is likely.",
    )


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 64, 1000])
def test_streaming_split_matches_whole_split_for_any_chunking(size: int) -> None:
    assert stream_split(OUTPUT, size) == split_thinking(OUTPUT)


def test_no_thought_is_all_answer() -> None:
    assert split_thinking("  Normal chest X-ray.") == ("", "Normal chest X-ray.")
    assert stream_split("Normal <unused chest", 1) == ("", "Normal <unused chest")


def test_budget_ending_mid_thought_gives_thought_and_no_answer() -> None:
    truncated = "<unused94>thought\nFirst, look at the lungs"
    assert split_thinking(truncated) == ("First, look at the lungs", "")
    assert stream_split(truncated, 3) == ("First, look at the lungs", "")


def test_marker_split_across_deltas_never_leaks() -> None:
    splitter = ThinkingSplitter()
    pieces = []
    for delta in ["<unu", "sed94>tho", "ught\nhm", "m<unus", "ed95>", "Yes."]:
        pieces += list(splitter.feed(delta))
    pieces += list(splitter.finish())
    assert all("<unused" not in p.text for p in pieces)
    assert "".join(p.text for p in pieces if p.kind == "thinking") == "hmm"
    assert "".join(p.text for p in pieces if p.kind == "answer") == "Yes."


def test_unprompted_thinking_after_leading_whitespace() -> None:
    assert split_thinking("\n <unused94>thought\nx<unused95>\n\nAnswer") == ("x", "Answer")


def test_answer_text_that_resembles_a_marker_prefix_is_kept() -> None:
    assert split_thinking("<unused9 is not a marker") == ("", "<unused9 is not a marker")


def test_second_thought_block_is_kept_out_of_the_answer() -> None:
    text = "<unused94>thought\na<unused95>Part one. <unused94>thought\nb<unused95>Part two."
    thinking, answer = split_thinking(text)
    assert "<unused" not in answer
    assert answer == "Part one. Part two."
    assert thinking == "ab"


# --- stop strings (medgem.answer.stops), the same streaming hold-back idea ---------------------------


def run_stops(deltas: list[str], stops: list[str]) -> tuple[str, str, bool]:
    import threading

    from medgem.answer.stops import apply_stops
    from medgem.engines.base import Finished, TextDelta, Timings, Usage

    cancel = threading.Event()
    events = [TextDelta(d) for d in deltas] + [Finished("cancelled", Usage(3, 9), Timings(0.1, 0.2))]
    out = list(apply_stops(iter(events), stops, cancel))
    text = "".join(e.text for e in out if isinstance(e, TextDelta))
    final = out[-1]
    assert isinstance(final, Finished)
    return text, final.finish_reason, cancel.is_set()


def test_stop_string_split_across_deltas_cuts_and_cancels() -> None:
    assert run_stops(["Normal ches", "t X-r", "ay.\n\nFind", "ings: none"], ["\n\nFind"]) == (
        "Normal chest X-ray.", "stop", True)


def test_no_stop_string_found_passes_everything_through() -> None:
    text, reason, cancelled = run_stops(["ab", "c\n", "\nd"], ["\n\nX"])
    assert (text, reason, cancelled) == ("abc\n\nd", "cancelled", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run_stops(["one END two STOP"], ["STOP", "END"])[0] == "one "
