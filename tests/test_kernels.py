"""Kernel choices made from one-time measurements and kept in kernels.json
(``engines.llamacpp.kernels``); the measurements themselves run in tests/test_vision_torch.py."""

from __future__ import annotations

from pathlib import Path

from medgem.engines.llamacpp import kernels


def test_int8_is_picked_only_where_it_is_clearly_faster() -> None:
    """int8 costs agreement, so it must beat the fastest float precision by INT8_MARGIN (1.15)."""
    assert kernels.INT8_MARGIN == 1.15
    assert kernels.pick_tower_dtype({"float32": 1.0, "int8": 0.5}) == "int8"
    assert kernels.pick_tower_dtype({"float32": 1.0, "int8": 0.9}) == "float32"  # 1.035 > 1.0
    assert kernels.pick_tower_dtype({"float32": 1.0, "int8": 0.85}) == "int8"  # 0.9775 <= 1.0
    assert kernels.pick_tower_dtype({"float32": 1.0, "bfloat16": 0.3, "int8": 0.5}) == "bfloat16"
    assert kernels.pick_tower_dtype({"float32": 1.0, "bfloat16": 0.6, "int8": 0.55}) == "bfloat16"  # 0.63 > 0.6
    assert kernels.pick_tower_dtype({"float32": 1.0, "bfloat16": 2.0}) == "float32"


def test_pytorch_s_tower_is_picked_only_where_it_beats_the_clip_by_the_margin() -> None:
    assert kernels.pick_vision({"llamacpp": 3.0, "torch": 1.5}) == "torch"
    assert kernels.pick_vision({"llamacpp": 3.0, "torch": 2.7}) == "llamacpp"  # 3.105 > 3.0
    assert kernels.pick_vision({"llamacpp": 1.0, "torch": 3.0}) == "llamacpp"


def test_a_kept_choice_that_is_not_among_its_candidates_is_measured_again(tmp_path: Path) -> None:
    import json

    store = tmp_path / "kernels.json"
    store.write_text(json.dumps({"k": {"choice": "int4", "times": {"float32": 1.0}},
                                 "ok": {"choice": "int8", "times": {"int8": 1.0}}}))
    assert kernels._kept("k", store) is None
    assert kernels._kept("ok", store) == {"choice": "int8", "times": {"int8": 1.0}}
    assert kernels._kept("missing", store) is None
