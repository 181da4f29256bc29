"""Flagged is not unusable: the demo's night and fog scenes are flagged (dark, blurry) but never unusable, so the
blocking gate never holds back a batch of them; near-black frames are unusable and do block it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from cv_dataops.demo.data import generate_scenes
from cv_dataops.quality.gating import batch_is_usable, blocked_batches
from cv_dataops.quality.measure import QualityThresholds, flag_issues, measure

MAX_UNUSABLE_RATE = 0.5  # QualityResource's default


def _quality_rows(paths, batch_id: str) -> pd.DataFrame:
    frame = pd.DataFrame([measure(path.read_bytes()) for path in paths])
    frame["odd_size_score"] = 1.0
    frame = frame.assign(**flag_issues(frame, QualityThresholds()))
    frame["batch_id"] = batch_id
    return frame


def test_night_and_fog_scenes_are_flagged_but_usable_and_their_batches_pass_the_gate(tmp_path):
    night = generate_scenes(tmp_path / "night", 16, seed=3, scenario_weights={"lighting": {"night": 1.0}})
    fog = generate_scenes(tmp_path / "fog", 16, seed=4, scenario_weights={"weather": {"fog": 1.0}})
    rows = pd.concat([_quality_rows([tmp_path / "night" / s.relative_path for s in night], "night"),
                      _quality_rows([tmp_path / "fog" / s.relative_path for s in fog], "fog")])
    assert rows[rows.batch_id == "night"].is_dark.mean() > 0.5      # flagged: worth a look, shown and counted
    assert not rows.is_unusable.any(), rows.unusable_reason.dropna().tolist()
    assert rows.unusable_reason.isna().all()
    assert blocked_batches(rows, MAX_UNUSABLE_RATE) == set()
    assert batch_is_usable(rows.is_unusable, MAX_UNUSABLE_RATE)


def test_a_batch_of_near_black_frames_is_unusable_and_blocked(tmp_path):
    night = generate_scenes(tmp_path / "scenes", 4, seed=5)
    paths = []
    for scene in night:
        source = tmp_path / "scenes" / scene.relative_path
        black = np.asarray(Image.open(source), dtype=np.float32) * 0.02
        paths.append(tmp_path / f"{source.stem}_black.png")
        Image.fromarray(black.astype(np.uint8)).save(paths[-1])
    rows = _quality_rows(paths, "black")
    assert rows.is_unusable.all() and rows.unusable_reason.str.contains("dark").all()
    assert blocked_batches(rows, MAX_UNUSABLE_RATE) == {"black"}
