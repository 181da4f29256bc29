"""Checks speak at the command line (issue 10): `cv-dataops run` lists every failed asset check of its runs with
its severity and what it saw; a failed ERROR check exits 3, a failed WARN check exits 0."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cv_dataops_tests.conftest import TINY_EMBEDDER_SPEC, encode, photo, write_files
from cv_dataops_tests.end_to_end.test_cli import cli


@pytest.fixture
def dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _failed_check_lines(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("checks: ")), None)
    assert start is not None, stdout
    return [line.strip() for line in lines[start + 1:] if line.startswith("  ")][:50] if "failed" in lines[start] \
        else []


@pytest.mark.slow  # two pipeline runs in subprocesses
def test_a_failed_warn_check_is_listed_and_exits_0_a_failed_error_check_exits_3(tmp_path, dagster_home):
    landing, root = tmp_path / "landing", tmp_path / "data"
    # 2 of 5 objects are no image: 40% quarantined, over the 20% the WARN check raw_images_quarantine_rate allows
    write_files(landing, {**{f"first/{i}.png": encode(photo(i), "PNG") for i in range(3)},
                          "first/notes.jpg": b"not an image at all", "first/page.png": b"<html></html>"})
    warned = cli("run", "--landing", str(landing), "--data-root", str(root), "--select", "raw_images")
    assert warned.returncode == 0, warned.stderr
    (line,) = [line for line in _failed_check_lines(warned.stdout) if "raw_images_quarantine_rate" in line]
    assert line.startswith("batch 00000001-") and "(WARN)" in line and "0.4" in line, line
    assert "ERROR" not in warned.stdout.split("checks: ")[1].splitlines()[0], warned.stdout
    assert not warned.stderr.strip(), warned.stderr

    # black images (near-black and blank: unusable by any definition): the blocking ERROR check
    # quality_batch_usable fails
    write_files(landing, {f"second/{i}.png": encode(Image.new("RGB", (64, 48 + i)), "PNG") for i in range(4)})
    failed = cli("run", "--landing", str(landing), "--data-root", str(root), "--select", "image_quality")
    assert failed.returncode == 3, (failed.stdout, failed.stderr)
    lines = _failed_check_lines(failed.stdout)
    # (the first batch's quality is measured by this run too: its synthetic photos may fail checks of their own)
    (usable,) = [line for line in lines if "quality_batch_usable" in line and line.startswith("batch 00000002-")]
    assert "(ERROR, blocking)" in usable, usable
    assert "unusable_rate=1" in usable and "images=4" in usable, usable
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "blocking check failed: image_quality: quality_batch_usable" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr


def _sharp_scene(seed: int, size=(320, 240)) -> Image.Image:
    """Coloured rectangles on a mid-grey ground: sharp, neither dark nor light, plenty of information."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(60, 200, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        draw.rectangle([x, y, x + int(rng.integers(5, 80)), y + int(rng.integers(5, 60))],
                       fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


@pytest.mark.slow  # the whole pipeline in a subprocess
def test_a_failed_non_blocking_error_check_exits_3_after_a_run_that_worked(tmp_path, dagster_home):
    """Every run succeeds, but class `b` has one image, so the curated set cannot hold one per split: the ERROR
    check curated_min_per_class_and_split fails, is listed with what it saw, and the command exits 3."""
    landing, root = tmp_path / "landing", tmp_path / "data"
    write_files(landing, {**{f"a/{i}.png": encode(_sharp_scene(i), "PNG") for i in range(8)},
                          "b/0.png": encode(_sharp_scene(100), "PNG")})
    result = cli("run", "--landing", str(landing), "--data-root", str(root),
                 env={"CV_DATAOPS_EMBEDDER": json.dumps(TINY_EMBEDDER_SPEC)})
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "batches run: 1; downstream assets refreshed: " in result.stdout, result.stdout  # nothing failed to run
    (line,) = [line for line in _failed_check_lines(result.stdout) if "curated_min_per_class_and_split" in line]
    assert line.startswith("curated_dataset: curated_min_per_class_and_split (ERROR): "), line
    assert "b" in line.split("(ERROR): ")[1], line  # what it saw names the short class
    assert result.stderr.strip().splitlines() == [
        "cv-dataops: error: 1 ERROR check(s) failed: curated_min_per_class_and_split (listed above)"], result.stderr
