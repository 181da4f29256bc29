"""image_duplicates and embedding_duplicates through Dagster: duplicates found across batches without comparing
all pairs again, hash duplicates that never wait for (or pull in) the embedder, flips the hashes miss added by the
embedding pass and grouped once both ran, and the automation that regroups when embedding pairs arrive late."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from PIL import ImageEnhance, ImageOps

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.defs.duplicates import checks as duplicates_checks
from cv_dataops.defs.duplicates.assets import (
    EMBEDDING_DUPLICATES,
    IMAGE_DUPLICATES,
    image_duplicates,
)
from cv_dataops_tests.conftest import encode, photo
from cv_dataops_tests.dagster_assets.test_quality_assets import (
    PER_BATCH,
    _land_and_plan,
    _resources,
    real_photo,
)

TINY_EMBEDDER = {"kind": "patch-kmeans", "n_centroids": 32, "n_patches": 4000, "dimension": 16,
                 "kmeans_iterations": 3}


def _by_key(result) -> dict[str, dict]:
    return {e.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def test_duplicates_across_batches_are_found_incrementally(tmp_path):
    originals = {f"first/{i}.png": real_photo(i) for i in range(5)}  # five different photos
    instance = dg.DagsterInstance.ephemeral()
    first = _land_and_plan(tmp_path, {k: encode(v, "PNG") for k, v in originals.items()}, instance)
    resources = _resources(tmp_path)
    assert dg.materialize(PER_BATCH, partition_key=first, instance=instance, resources=resources).success
    assert dg.materialize([image_duplicates], instance=instance, resources=resources).success

    source = originals["first/2.png"]
    second_files = {
        "second/resized.jpg": encode(source.resize((160, 120)), "JPEG", quality=60),
        "second/brighter.png": encode(ImageEnhance.Brightness(source).enhance(1.2), "PNG"),
        "second/same_pixels.bmp": encode(originals["first/4.png"], "BMP"),
        "second/different.png": encode(photo(77, (320, 240)), "PNG"),
    }
    second = _land_and_plan(tmp_path, second_files, instance)
    assert dg.materialize(PER_BATCH, partition_key=second, instance=instance, resources=resources).success
    result = dg.materialize([image_duplicates, duplicates_checks.duplicates_one_kept_per_group], instance=instance,
                            resources=resources)
    assert result.success
    metadata = _by_key(result)["image_duplicates"]
    assert metadata["images_looked_up"] == 4  # only the new batch, not all pairs again
    assert metadata["images_indexed"] == 9
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    paths = catalog.read("images").to_pandas().set_index("image_id").relative_path
    groups = catalog.read("duplicates").to_pandas()
    groups["path"] = groups.image_id.map(paths)
    by_group = {g: set(members.path) for g, members in groups.groupby("group_id")}
    assert {"first/2.png", "second/resized.jpg", "second/brighter.png"} in by_group.values()
    assert {"first/4.png", "second/same_pixels.bmp"} in by_group.values()
    kinds = dict(zip(groups.path, groups.kind))
    assert kinds["second/same_pixels.bmp"] == "exact" and kinds["second/resized.jpg"] == "near"
    assert "second/different.png" not in set(groups.path)
    kept = dict(zip(groups.path, groups.keep))  # the original, not its half-size JPEG or its brighter copy
    assert kept["first/2.png"] and not kept["second/resized.jpg"] and not kept["second/brighter.png"]


@pytest.mark.slow  # fits a tiny embedder and runs the duplicates step five times
def test_hash_duplicates_do_not_wait_for_embeddings_and_the_groups_take_the_flips_once_both_ran(tmp_path,
                                                                                                monkeypatch):
    from cv_dataops.definitions import load_definitions
    from cv_dataops.defs.embeddings.assets import image_embeddings
    from cv_dataops.runner import _selected_keys

    # `cv-dataops run --select image_quality,image_duplicates` selects no embedding stage
    wanted = _selected_keys(load_definitions(), ["image_quality", "image_duplicates"])
    assert IMAGE_DUPLICATES in wanted and not {dg.AssetKey("image_embeddings"), EMBEDDING_DUPLICATES} & wanted

    monkeypatch.setenv("CV_DATAOPS_EMBEDDER", json.dumps(TINY_EMBEDDER))
    originals = {f"first/{i}.png": real_photo(i) for i in range(5)}
    instance = dg.DagsterInstance.ephemeral()
    first = _land_and_plan(tmp_path, {k: encode(v, "PNG") for k, v in originals.items()}, instance)
    resources = _resources(tmp_path)
    assert dg.materialize(PER_BATCH, partition_key=first, instance=instance, resources=resources).success
    second = _land_and_plan(tmp_path, {"second/mirrored.png": encode(ImageOps.mirror(originals["first/1.png"]), "PNG"),
                                       "second/half.png": encode(originals["first/3.png"].resize((160, 120)), "PNG"),
                                       "second/different.png": encode(photo(77, (320, 240)), "PNG")}, instance)
    assert dg.materialize(PER_BATCH, partition_key=second, instance=instance, resources=resources).success
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    paths = catalog.read("images").to_pandas().set_index("image_id").relative_path

    # the hash duplicates alone: no embedding exists (nor is fitted), the half-size copy is grouped already
    alone = dg.materialize([image_duplicates, duplicates_checks.duplicates_one_kept_per_group], instance=instance,
                           resources=resources, selection=[IMAGE_DUPLICATES])
    assert alone.success and set(_by_key(alone)) == {"image_duplicates"}
    assert not (tmp_path / "data" / "models").exists() and catalog.read("embeddings").num_rows == 0
    groups = catalog.read("duplicates").to_pandas()
    assert set(groups.image_id.map(paths)) == {"first/3.png", "second/half.png"}

    # embeddings, then the embedding pass alone: its own table; the groups wait for image_duplicates
    for batch in (first, second):
        assert dg.materialize([image_embeddings], partition_key=batch, instance=instance, resources=resources).success
    late = dg.materialize([image_duplicates], instance=instance, resources=resources,
                          selection=[EMBEDDING_DUPLICATES])
    assert late.success and _by_key(late)["embedding_duplicates"]["images_looked_up_by_embedding"] == 8
    found = {frozenset((paths[p.image_id_a], paths[p.image_id_b])): p
             for p in catalog.read("embedding_duplicate_pairs").to_pandas().itertuples()}
    assert set(found) == {frozenset({"first/1.png", "second/mirrored.png"}), frozenset({"first/3.png", "second/half.png"})}
    pair = found[frozenset({"first/1.png", "second/mirrored.png"})]
    assert pair.embedding_distance < 0.01 and pair.distance > 16  # the hashes alone miss the mirror image

    # image_duplicates again: nothing looked up by hash, the groups hold both kinds
    regroup = dg.materialize([image_duplicates, duplicates_checks.duplicates_one_kept_per_group], instance=instance,
                             resources=resources, selection=[IMAGE_DUPLICATES])
    metadata = _by_key(regroup)["image_duplicates"]
    assert regroup.success and metadata["images_looked_up"] == 0 and metadata["pairs_by_embedding"] == 1
    pairs = catalog.read("duplicate_pairs").to_pandas()
    assert set(pairs.found_by) == {"hash", "embedding"}
    (mirror,) = pairs[pairs.found_by == "embedding"].itertuples()
    assert mirror.kind == "near" and mirror.embedding_distance < 0.01
    groups = catalog.read("duplicates").to_pandas()
    members = groups.groupby("group_id").image_id.apply(lambda ids: frozenset(paths[i] for i in ids))
    assert set(members) == {frozenset({"first/3.png", "second/half.png"}),
                            frozenset({"first/1.png", "second/mirrored.png"})}
    kept = set(groups.image_id[groups.keep].map(paths))
    assert kept == {"first/3.png", "first/1.png"}  # the originals: larger, and landed before the mirror

    # both together (one step, the embedding pass first): nothing new, the same tables
    before = catalog.read("duplicates")
    both = dg.materialize([image_duplicates], instance=instance, resources=resources)
    assert set(_by_key(both)) == {"image_duplicates", "embedding_duplicates"}
    assert _by_key(both)["embedding_duplicates"]["images_looked_up_by_embedding"] == 0
    assert catalog.read("duplicates").equals(before)

    # a data root from before embedding_duplicates had its own table: its embedding pairs stay in the groups
    (tmp_path / "data" / "catalog" / "embedding_duplicate_pairs" / "all.parquet").unlink()
    (tmp_path / "data" / "state" / "embedding_duplicates.json").unlink()
    assert dg.materialize([image_duplicates], instance=instance, resources=resources,
                          selection=[IMAGE_DUPLICATES]).success
    assert catalog.read("duplicates").equals(before)


def test_image_duplicates_regroups_when_embedding_pairs_arrive_after_it_ran(tmp_path):
    """The automation: embedding_duplicates updated after image_duplicates requests image_duplicates (without
    being its dependency); both updated by one run requests nothing more."""
    @dg.asset(name="image_quality")
    def image_quality_stub() -> None: ...

    @dg.asset(name="image_embeddings")
    def image_embeddings_stub() -> None: ...

    @dg.multi_asset(specs=[dg.AssetSpec(IMAGE_DUPLICATES, deps=["image_quality"],
                                        automation_condition=image_duplicates_condition()),
                           dg.AssetSpec(EMBEDDING_DUPLICATES, deps=["image_embeddings"])], can_subset=True)
    def duplicates_stub(context):
        for key in sorted(context.selected_asset_keys):
            yield dg.MaterializeResult(asset_key=key)

    defs = [image_quality_stub, image_embeddings_stub, duplicates_stub]
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(defs, instance=instance).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert result.total_requested == 0
    cursor = result.cursor
    assert dg.materialize([duplicates_stub], instance=instance, selection=[EMBEDDING_DUPLICATES]).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert result.get_num_requested(IMAGE_DUPLICATES) == 1
    assert dg.materialize([duplicates_stub], instance=instance, selection=[IMAGE_DUPLICATES]).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_num_requested(IMAGE_DUPLICATES) == 0
    assert dg.materialize([duplicates_stub], instance=instance).success  # both in one run
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_num_requested(IMAGE_DUPLICATES) == 0


def image_duplicates_condition():
    from cv_dataops.defs.duplicates.assets import IMAGE_DUPLICATES_CONDITION

    return IMAGE_DUPLICATES_CONDITION
