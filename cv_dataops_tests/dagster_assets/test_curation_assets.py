"""Embeddings, scenarios and the curated dataset through the whole pipeline, on generated scenes with known labels."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow.parquet as pq
import pytest

from cv_dataops.config import Settings
from cv_dataops.demo import data as demo_data
from cv_dataops.runner import open_instance, run_pipeline

# A tiny built-in embedder: these tests need vectors, not the real fit (test_embeddings measures that one).
TINY_EMBEDDER = {"kind": "patch-kmeans", "n_centroids": 16, "n_patches": 4000, "dimension": 16,
                 "kmeans_iterations": 3}


@pytest.fixture(scope="module")
def curated_catalog(tmp_path_factory):
    """80 generated scenes with a near duplicate of one of them, run through every stage by `cv-dataops run`."""
    root = tmp_path_factory.mktemp("curation")
    landing = root / "landing"
    demo_data.generate_demo(landing, count=80, seed=3, include_bad=True)
    from PIL import Image

    source = sorted(landing.glob("circle/scene_*.jpg"))[0]
    Image.open(source).resize((160, 120)).save(landing / "circle" / "near_copy.jpg", quality=70)
    with pytest.MonkeyPatch.context() as patch:  # module-scoped: undone after the module, never leaked on (a
        patch.setenv("DAGSTER_HOME", str(root / "home"))  # later test's instance would hold these runs)
        instance = open_instance(str(root / "data"))
        summary = run_pipeline(instance, landing=str(landing), data_root=str(root / "data"),
                               settings=Settings.build(embedder=TINY_EMBEDDER))
        yield root, instance, summary


def test_every_stage_ran_and_checks_passed(curated_catalog):
    root, instance, summary = curated_catalog
    assert {"image_duplicates", "scenarios", "curated_dataset"} <= set(summary.downstream_assets)
    evaluations = {}
    for key in ("curated_no_leakage", "curated_no_unusable_image", "curated_min_per_class_and_split",
                "curated_keeps_scenarios_and_classes"):
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("curated_dataset"), key)])
        evaluations[key] = list(record.values())[0].status.value
    assert set(evaluations.values()) == {"SUCCEEDED"}, evaluations


def test_curated_table_splits_and_snapshot(curated_catalog):
    root = curated_catalog[0]
    data = root / "data"
    curated = pq.read_table(data / "catalog" / "curated").to_pandas()
    quality = pq.read_table(data / "catalog" / "quality").to_pandas().set_index("image_id")
    duplicates = pq.read_table(data / "catalog" / "duplicates").to_pandas()
    assert set(curated.split) == {"train", "val", "test"}
    assert not quality.loc[curated.image_id].is_unusable.any()
    for _, members in duplicates.groupby("group_id"):  # at most one member of a group, and never across splits
        assert curated.image_id.isin(members.image_id).sum() <= 1
    assert curated.selection_reason.str.len().min() > 0
    (snapshot_id,) = set(curated.snapshot_id)
    folder = data / "snapshots" / snapshot_id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest and {"image_id", "uri", "sha256", "label", "split"} <= set(manifest[0] if isinstance(manifest, list)
                                                                                else manifest["images"][0])
    coco = json.loads((folder / "coco.json").read_text())
    assert len(coco["images"]) == len(curated) and {c["name"] for c in coco["categories"]} == set(curated.label)
    assert len(json.loads((folder / "label_studio.json").read_text())) == len(curated)
    assert len(list((folder / "imagefolder").rglob("*.jpg"))) == len(curated)
    assert (folder / "export.csv").read_text().count("\n") == len(curated) + 1


def test_same_inputs_same_snapshot(curated_catalog):
    root, instance, _ = curated_catalog
    from cv_dataops.definitions import load_definitions

    before = set(pq.read_table(root / "data" / "catalog" / "curated").column("snapshot_id").to_pylist())
    settings = Settings.build(landing=root / "landing", data_root=root / "data", embedder=TINY_EMBEDDER)
    job = load_definitions(settings).resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("curated_dataset")]).success
    after = set(pq.read_table(root / "data" / "catalog" / "curated").column("snapshot_id").to_pylist())
    assert before == after


def test_scenarios_and_embeddings(curated_catalog):
    data = curated_catalog[0] / "data"
    embeddings = pq.read_table(data / "catalog" / "embeddings").to_pandas()
    images = pq.read_table(data / "catalog" / "images").to_pandas()
    assert set(embeddings.image_id) == set(images.image_id)
    assert len(set(embeddings.embedder_version)) == 1
    scenarios = pq.read_table(data / "catalog" / "scenarios").to_pandas()
    assert set(scenarios.image_id) == set(images.image_id) and scenarios.scenario.nunique() >= 2
    assert len(list((data / "models").glob("patch-kmeans-*.npz"))) == 1  # the configured options' own model


def test_a_second_batch_keeps_earlier_splits_and_links_the_earlier_tree(tmp_path, monkeypatch):
    """A run that adds a batch curates a new version: every earlier image keeps its split (none moves to test
    after a model trained on it), and the new snapshot's ImageFolder tree shares the earlier tree's files (hard
    links) instead of copying them again."""
    import os

    landing, data = tmp_path / "landing", tmp_path / "data"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    settings = Settings.build(embedder=TINY_EMBEDDER)
    demo_data.generate_demo(landing / "first", count=60, seed=11)
    instance = open_instance(str(data))
    run_pipeline(instance, landing=str(landing), data_root=str(data), settings=settings)
    first = pq.read_table(data / "catalog" / "curated").to_pandas().set_index("image_id")
    demo_data.generate_demo(landing / "second", count=30, seed=12)
    run_pipeline(instance, landing=str(landing), data_root=str(data), settings=settings)
    second = pq.read_table(data / "catalog" / "curated").to_pandas().set_index("image_id")
    assert len(second) > len(first) and set(second.snapshot_id) != set(first.snapshot_id)
    both = first.index.intersection(second.index)
    assert len(both) >= 0.9 * len(first)
    assert (first.split[both] == second.split[both]).all()
    record = instance.get_latest_materialization_event(dg.AssetKey("curated_dataset")).asset_materialization
    assert record.metadata["splits_kept"].value == len(both) and record.metadata["splits_moved"].value == 0
    (snapshot_id,) = set(second.snapshot_id)
    files = list((data / "snapshots" / snapshot_id / "imagefolder").rglob("*.jpg"))
    assert len(files) == len(second)
    linked = [f for f in files if os.stat(f).st_nlink >= 2]
    new = second.index.difference(first.index)
    assert len(linked) == len(both) and len(files) - len(linked) == len(new)
