"""The synthetic demo data: deterministic, correctly laid out, truthful about its scenarios and its defects."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, UnidentifiedImageError

from cv_dataops.demo.data import (
    CAMERAS,
    CLASSES,
    DEMO_COLUMNS,
    generate_demo,
    generate_scenes,
    render_scene,
    resolve_scenario_weights,
    shape_mask,
    write_bad_files,
    write_digits,
)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mean_brightness(path: Path) -> float:
    with Image.open(path) as image:
        return float(np.asarray(image.convert("L"), np.float32).mean())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """One demo data set shared by the read-only tests below, to keep the module fast."""
    root = tmp_path_factory.mktemp("demo")
    return root, generate_demo(root, count=30, seed=7)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    generate_demo(tmp_path / "a", count=12, seed=3)
    generate_demo(tmp_path / "b", count=12, seed=3)
    generate_demo(tmp_path / "c", count=12, seed=4)
    first, second, other = (_tree_bytes(tmp_path / name) for name in "abc")
    assert len(first) == 12 + 6
    assert first == second
    assert first != other


def test_image_folder_layout_count_and_balanced_classes(demo: tuple[Path, pd.DataFrame]) -> None:
    root, frame = demo
    scenes = frame[frame["kind"] == "scene"]
    assert len(scenes) == 30
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*")) == sorted(frame["relative_path"])
    for relative_path, label in zip(scenes["relative_path"], scenes["label"], strict=True):
        folder, name = relative_path.split("/")
        assert folder == label and name.startswith("scene_") and name.endswith(".jpg")
    counts = Counter(scenes["label"])
    assert set(counts) == set(CLASSES)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert list(frame.columns) == list(DEMO_COLUMNS)


def test_scenes_have_the_camera_size_and_exif_round_trips(demo: tuple[Path, pd.DataFrame]) -> None:
    root, frame = demo
    scenes = frame[frame["kind"] == "scene"].sort_values("relative_path", key=lambda s: s.str.split("/").str[1])
    times = []
    for row in scenes.itertuples():
        camera = CAMERAS[row.camera]
        with Image.open(root / row.relative_path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == camera.size
            exif = image.getexif()
        assert exif[0x010F] == camera.make
        assert exif[0x0110] == camera.model
        assert exif[0x0112] == 1
        taken = datetime.strptime(exif.get_ifd(0x8769)[0x9003], "%Y:%m:%d %H:%M:%S")
        assert taken == datetime.fromisoformat(row.captured_at)
        times.append(taken)
    assert times == sorted(times) and len(set(times)) == len(times)
    assert set(scenes["camera"]) == {"cam_a", "cam_b"}  # both cameras appear with the default weights


def test_bad_files_fail_the_way_their_truth_says(demo: tuple[Path, pd.DataFrame]) -> None:
    root, frame = demo
    bad = {row.kind: row for row in frame[frame["kind"] != "scene"].itertuples()}
    assert set(bad) == {"truncated", "not_an_image", "tiny", "duplicate", "empty"}
    source = bad["duplicate"].expected_outcome.removeprefix("duplicate_of:")
    outcomes = Counter(frame.loc[frame["kind"] != "scene", "expected_outcome"])
    assert outcomes == {"quarantine:truncated": 1, "quarantine:not_an_image": 2, "quarantine:empty_file": 1,
                        "quarantine:too_small": 1, f"duplicate_of:{source}": 1}

    truncated = root / bad["truncated"].relative_path
    with Image.open(truncated) as image, pytest.raises(OSError):
        image.load()

    for row in frame[frame["kind"] == "not_an_image"].itertuples():
        with pytest.raises(UnidentifiedImageError):
            Image.open(root / row.relative_path)
    assert {Path(p).suffix for p in frame.loc[frame["kind"] == "not_an_image", "relative_path"]} == {".jpg", ".png"}

    assert (root / bad["empty"].relative_path).stat().st_size == 0
    with Image.open(root / bad["tiny"].relative_path) as image:
        assert image.size == (4, 4)

    assert (root / bad["duplicate"].relative_path).read_bytes() == (root / source).read_bytes()
    assert source < bad["duplicate"].relative_path  # a sorted walk meets the source first
    assert source in set(frame.loc[frame["kind"] == "scene", "relative_path"])


def test_bad_files_need_a_good_scene(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_bad_files(tmp_path, [])


def test_truncated_file_is_half_of_a_real_scene(tmp_path: Path) -> None:
    good = generate_scenes(tmp_path, 4, seed=1)
    truncated = next(b for b in write_bad_files(tmp_path, good, seed=1) if b.kind == "truncated")
    source = (tmp_path / truncated.source_path).read_bytes()
    assert (tmp_path / truncated.relative_path).read_bytes() == source[: len(source) // 2]


def test_scenario_weights_are_honoured_and_night_is_darker(tmp_path: Path) -> None:
    night = generate_scenes(tmp_path / "night", 12, seed=5, scenario_weights={"lighting": {"night": 1.0}})
    day = generate_scenes(tmp_path / "day", 12, seed=5, scenario_weights={"lighting": {"day": 1.0}})
    assert {s.lighting for s in night} == {"night"} and {s.lighting for s in day} == {"day"}
    # Only the lighting differs: the other attributes are drawn from the same per-scene streams.
    assert [(s.label, s.background, s.weather, s.camera) for s in night] == \
        [(s.label, s.background, s.weather, s.camera) for s in day]
    for n, d in zip(night, day, strict=True):
        assert _mean_brightness(tmp_path / "night" / n.relative_path) < \
            0.6 * _mean_brightness(tmp_path / "day" / d.relative_path)

    fog_b = generate_scenes(tmp_path / "fog", 8, seed=5,
                            scenario_weights={"weather": {"fog": 1}, "camera": {"cam_b": 1}})
    assert {(s.weather, s.camera) for s in fog_b} == {("fog", "cam_b")}


def test_scenario_weights_are_validated() -> None:
    assert resolve_scenario_weights({"lighting": {"night": 2.0}})["lighting"] == {"day": 0.0, "dusk": 0.0,
                                                                                   "night": 2.0}
    for bad in ({"season": {"winter": 1.0}}, {"lighting": {"noon": 1.0}}, {"lighting": {"day": 0.0}},
                {"weather": {"rain": -1.0, "fog": 2.0}}):
        with pytest.raises(ValueError):
            resolve_scenario_weights(bad)


def test_classes_have_different_shapes() -> None:
    size, centre, radius = (120, 120), (60.0, 60.0), 40.0
    fill = {}  # share of the bounding box the shape covers
    for label in CLASSES:
        mask = np.asarray(shape_mask(label, size, centre, radius)) > 127
        ys, xs = np.nonzero(mask)
        fill[label] = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    assert fill["square"] > 0.95
    assert 0.74 < fill["circle"] < 0.82
    assert 0.45 < fill["triangle"] < 0.55
    assert fill["star"] < 0.45
    assert min(abs(a - b) for i, a in enumerate(fill.values()) for b in list(fill.values())[i + 1:]) > 0.05


def test_rendered_classes_differ_only_where_the_object_is() -> None:
    renders = {label: np.asarray(render_scene(np.random.default_rng(11), label, "grass", "day", "clear", "cam_a"),
                                 np.int16) for label in CLASSES}
    circle = renders["circle"]
    for label in CLASSES[1:]:
        changed = np.abs(renders[label] - circle).max(axis=2) > 30
        assert 0.01 < changed.mean() < 0.5  # a shape-sized region, not the whole picture


def test_render_scene_rejects_unknown_values() -> None:
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), "hexagon", "sky", "day", "clear", "cam_a")
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), "circle", "sky", "day", "snow", "cam_a")


def test_later_batches_get_new_names_and_later_timestamps(tmp_path: Path) -> None:
    first = generate_scenes(tmp_path, 5, seed=2)
    later = generate_scenes(tmp_path, 5, seed=2, start_index=5)
    assert not {s.relative_path for s in first} & {s.relative_path for s in later}
    assert max(s.captured_at for s in first) < min(s.captured_at for s in later)
    assert len(list(tmp_path.rglob("*.jpg"))) == 10


def test_digits_are_upscaled_greyscale_pngs_with_ten_labels(tmp_path: Path) -> None:
    frame = write_digits(tmp_path, size=32, limit=60)
    assert len(frame) == 60
    assert sorted(frame["label"].unique()) == [str(d) for d in range(10)]
    for row in frame.itertuples():
        assert row.relative_path.split("/")[0] == row.label
        with Image.open(tmp_path / row.relative_path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (32, 32))
            pixels = np.asarray(image)
        assert pixels.max() > 150 and pixels.min() < 30  # ink on background, not a flat square
