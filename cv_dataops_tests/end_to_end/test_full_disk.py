"""A full disk (issue 9): a run that fills the data root's disk fails with one line naming where (the batch and the
step; Dagster's instance when it lives on that disk and fails before any step) and that the disk is full, leaves
nothing half-written as a table, and once space is freed the next run finishes every batch through every stage
with the accounting intact.

The data root is a small tmpfs the test mounts (and unmounts in teardown): root only, skipped with the reason where
mounting fails. The disk is filled with a filler file that leaves a fixed amount free, enough to plan a batch but
not to ingest it, so where the run stops does not depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cv_dataops_tests.conftest import TINY_EMBEDDER_SPEC, encode, photo, write_files

DISK_SIZE = "24m"
LEFT_FREE = 256 * 1024  # planning writes a few kB (lease, manifest); the batch's analysis cache is over 1 MB
IMAGES = 200


def _mount_failure(where: Path) -> str:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    return f"mount -t tmpfs failed here: {done.stderr.strip() or done.returncode}" if done.returncode else ""


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    why = _mount_failure(where)
    if why:
        pytest.skip(why)
    try:
        yield where
    finally:
        for _ in range(20):  # a process that just exited may still hold a file for a moment
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """Write a filler file (real pages: tmpfs does not count holes) until only ``leave`` bytes are free."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    size = stats.f_bavail * stats.f_frsize - leave
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as handle:
        while size > 0:
            handle.write(chunk[:min(size, len(chunk))])
            size -= len(chunk)
    return filler


def _environment(home: Path | None) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CV_DATAOPS_", "DAGSTER_HOME"))}
    environment.update({"CV_DATAOPS_EMBEDDER": json.dumps(TINY_EMBEDDER_SPEC), "CV_DATAOPS_WORKERS": "2"})
    if home is not None:
        environment["DAGSTER_HOME"] = str(home)
    return environment


def _cli(environment: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cv_dataops.cli", *args], env=environment, capture_output=True,
                          text=True, timeout=600)


def _tables_are_whole(root: Path) -> None:
    """Every Parquet file under the data root reads; no temporary file of an atomic write is left."""
    for path in root.rglob("*.parquet"):
        pq.read_metadata(path)
    leftovers = [str(p) for p in root.rglob(".cv-dataops-tmp-*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def _assert_accounting(root: Path, landed: set[str]) -> None:
    images = pq.read_table(root / "catalog" / "images").to_pandas()
    objects = pq.read_table(root / "catalog" / "objects").to_pandas()
    assert images.image_id.is_unique
    final = objects[objects.outcome != "deferred"]
    assert not final.duplicated(["uri", "version"]).any(), "an object version has two outcomes"
    assert set(final.relative_path) == landed, "every landed file has its outcome"
    assert set(final.outcome) == {"image"}
    ids = set(images.image_id)
    for name in ("quality", "embeddings", "scenarios"):
        table = pq.read_table(root / "catalog" / name).to_pandas()
        assert table.image_id.is_unique, f"{name} has doubled rows"
        assert set(table.image_id) == ids, f"{name} misses {len(ids - set(table.image_id))} image(s)"
    curated = pq.read_table(root / "catalog" / "curated").to_pandas()
    assert set(curated.image_id) <= ids and len(curated)


@pytest.mark.slow  # three `cv-dataops run` processes
@pytest.mark.parametrize("instance", [
    "outside",  # Dagster's instance elsewhere (as deployed: Postgres), only the catalog on the full disk
    "inside",  # the CLI's default instance in the data root: its sqlite fails first, outside any step
])
def test_a_run_that_fills_the_disk_fails_in_one_line_and_the_next_run_finishes_everything(tmp_path, small_disk,
                                                                                          instance):
    landing, root = tmp_path / "landing", small_disk / "data"
    classes = ("cat", "dog", "car", "ship")
    files = {f"{classes[i % 4]}/{i:04d}.jpg": encode(photo(i), "JPEG", quality=95) for i in range(IMAGES)}
    write_files(landing, files)
    environment = _environment(tmp_path / "home" if instance == "outside" else None)
    filler = _fill(small_disk, LEFT_FREE)

    full = _cli(environment, "run", "--landing", str(landing), "--data-root", str(root))
    assert full.returncode != 0, full.stdout
    lines = [line for line in full.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, full.stderr
    if instance == "outside":  # the step that hit the full disk names itself
        assert lines[0].startswith("cv-dataops: error: batch "), lines[0]
        assert "No space left on device" in lines[0] and "raw_images" in lines[0], lines[0]
    else:  # no step was running: the line names the instance (or the batch whose run it failed to record)
        assert lines[0].startswith(("cv-dataops: error: Dagster's instance in ", "cv-dataops: error: batch ")), \
            lines[0]
        assert "no space left" in lines[0].lower() and str(root) in lines[0], lines[0]
    _tables_are_whole(root)

    filler.unlink()  # space freed
    again = _cli(environment, "run", "--landing", str(landing), "--data-root", str(root))
    assert again.returncode == 0, again.stderr
    assert not again.stderr.strip(), again.stderr
    _tables_are_whole(root)
    _assert_accounting(root, set(files))

    status = _cli(environment, "status", "--landing", str(landing), "--data-root", str(root))
    assert status.returncode == 0, status.stderr
    for word in ("UNFINISHED", "failed", "outdated", "never", "missing", "stale", "running"):
        assert word not in status.stdout, status.stdout
