"""Nearest-neighbour search: exact ranking on known vectors, the embedder checks, and `cv-dataops search --like`."""

from __future__ import annotations

import json
import math
import os
import warnings
from datetime import datetime, timezone

import numpy as np
import pytest

from cv_dataops import cli
from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.discovery.search import (
    MixedEmbedderVersionsWarning,
    UnknownImageError,
    embed_image_bytes,
    similar_images,
    stored_embedder,
)
from cv_dataops.embeddings.embedders import PatchKMeansEmbedder, embed_bytes
from cv_dataops.embeddings.graph_store import graph_key, load_graph, update_graph
from cv_dataops.embeddings.store import PATCH_KMEANS_KEY
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.embeddings.vectors import read_vectors
from cv_dataops.ingest.tables import IMAGES
from cv_dataops_tests.conftest import encode, photo

# Angle (degrees) from the query direction (1, 0, 0) of every image; ids are 64 hex digits like real ones.
ANGLES = {"q": 0, "a": 10, "b": 30, "c": 50, "d": 70, "e": 90, "f": 120, "g": 180}
BATCHES = {"b1": ["q", "a", "c", "e", "g"], "b2": ["b", "d", "f"]}
TINY_EMBEDDER = {"n_centroids": 8, "n_patches": 2000, "dimension": 8, "kmeans_iterations": 2}


def image_id(name: str) -> str:
    return name * 64 if name in "abcdef" else f"{ord(name):x}" * 32


def write_images(catalog: Catalog, batch_id: str, ids: list[str]) -> None:
    catalog.write(IMAGES, IMAGES.from_rows({
        "image_id": i, "uri": f"/landing/{i[:8]}.jpg", "batch_id": batch_id, "relative_path": f"{i[:8]}.jpg",
        "width": 64, "height": 48, "format": "JPEG", "mode": "RGB", "bytes": 1000, "frames": 1, "has_alpha": False,
        "ingested_at": datetime(2024, 1, 1, tzinfo=timezone.utc)} for i in ids), batch_id)


def write_embeddings(catalog: Catalog, batch_id: str, vectors: dict[str, list[float]], version: str = "v1") -> None:
    catalog.write(EMBEDDINGS, EMBEDDINGS.from_rows(
        {"image_id": i, "batch_id": batch_id, "vector": v, "embedder": "test", "embedder_version": version}
        for i, v in vectors.items()), batch_id)


def direction(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees)), 0.0]


def search(*args: str) -> int:
    """`cv-dataops search ...` in-process: its exit code, its output in capsys."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cli.main(["search", *args])


def build_graph(catalog: Catalog, version: str = "v1"):
    """The neighbour_index asset's work, at any size (it starts a graph only from 20,000 vectors)."""
    return update_graph(catalog.storage, version, catalog.partition_versions(EMBEDDINGS),
                        lambda batch: read_vectors(catalog, version, batches=[batch]), catalog_rows=0, min_rows=0)


@pytest.fixture(params=["scan", "graph"])
def catalog(tmp_path, request) -> Catalog:
    """Every search test runs twice: scanning every vector, and through the HNSW graph of the batches written here
    (batches a test writes later are not in the graph: they are scanned)."""
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    for batch_id, names in BATCHES.items():
        write_images(catalog, batch_id, [image_id(n) for n in names])
        write_embeddings(catalog, batch_id, {image_id(n): direction(ANGLES[n]) for n in names})
    if request.param == "graph":
        update = build_graph(catalog)
        assert update.rows == 8 and update.batches_added == ["b1", "b2"]
    return catalog


def test_the_graph_follows_the_catalog_batch_by_batch(tmp_path):
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    write_embeddings(catalog, "b1", {image_id(n): direction(ANGLES[n]) for n in BATCHES["b1"]})
    assert update_graph(catalog.storage, "v1", catalog.partition_versions(EMBEDDINGS), lambda b: None,
                        catalog_rows=5).rows == 0  # below 20,000 vectors: no graph, searches scan
    assert build_graph(catalog).rebuilt
    write_embeddings(catalog, "b2", {image_id(n): direction(ANGLES[n]) for n in BATCHES["b2"]})
    added = build_graph(catalog)
    assert not added.rebuilt and added.batches_added == ["b2"] and added.rows == 8 and added.rows_added == 3
    assert build_graph(catalog).batches_added == []  # nothing new: nothing read or written
    write_embeddings(catalog, "b1", {image_id(n): direction(ANGLES[n] + 1) for n in BATCHES["b1"]})  # re-embedded
    again = build_graph(catalog)
    assert again.rebuilt and "changed" in again.reason and again.rows == 8
    graph = load_graph(catalog.storage, "v1")
    assert graph.current_batches(catalog.partition_versions(EMBEDDINGS)) == {"b1", "b2"}
    catalog.storage.write_bytes(graph_key("v1"), b"a graph of another format")
    assert load_graph(catalog.storage, "v1") is None  # a search then scans every batch
    catalog.storage.delete(graph_key("v1")[:-len(".npz")] + ".batches.json")
    assert build_graph(catalog).rebuilt and load_graph(catalog.storage, "v1") is not None


@pytest.mark.parametrize("chunk_rows", [1, 2, 65_536])
def test_ranks_by_cosine_distance_across_batches_and_chunks(catalog, chunk_rows):
    result = similar_images(catalog, image_id("q"), k=4, chunk_rows=chunk_rows).to_pylist()
    assert [r["image_id"] for r in result] == [image_id(n) for n in "abcd"]  # the query itself is left out
    assert [r["rank"] for r in result] == [1, 2, 3, 4]
    assert [r["batch_id"] for r in result] == ["b1", "b2", "b1", "b2"]
    assert [r["uri"] for r in result] == [f"/landing/{image_id(n)[:8]}.jpg" for n in "abcd"]
    expected = [1 - math.cos(math.radians(ANGLES[n])) for n in "abcd"]
    assert [r["distance"] for r in result] == pytest.approx(expected, abs=1e-6)
    assert similar_images(catalog, image_id("q")[:3], k=1).schema.metadata == {
        b"query_image_id": image_id("q").encode(), b"embedder_version": b"v1"}


def test_k_larger_than_the_catalog_lists_every_other_image(catalog):
    result = similar_images(catalog, image_id("q"), k=100)
    assert result.column("image_id").to_pylist() == [image_id(n) for n in "abcdefg"]
    assert result.column("distance").to_pylist()[-1] == pytest.approx(2.0)  # the opposite direction


def test_a_vector_query_keeps_every_image_and_is_normalised(catalog):
    result = similar_images(catalog, np.array([5.0, 0.0, 0.0]), k=2).to_pylist()
    assert [r["image_id"] for r in result] == [image_id("q"), image_id("a")]
    assert result[0]["distance"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="zero"):
        similar_images(catalog, np.zeros(3))
    with pytest.raises(ValueError, match="not all 4-dimensional"):
        similar_images(catalog, np.ones(4))
    with pytest.raises(ValueError, match="k must be at least 1"):
        similar_images(catalog, image_id("q"), k=0)


def test_ids_can_be_given_by_a_unique_prefix(catalog):
    assert similar_images(catalog, image_id("a")[:6].upper(), k=1).column("image_id").to_pylist() == [image_id("q")]
    with pytest.raises(UnknownImageError, match="no image in the catalog has an id starting with '0123'"):
        similar_images(catalog, "0123")
    write_images(catalog, "b3", ["ab" * 32])
    write_embeddings(catalog, "b3", {"ab" * 32: direction(5)})
    with pytest.raises(UnknownImageError, match="2 images have an id starting with 'a'"):
        similar_images(catalog, "a")
    write_images(catalog, "b4", ["cd" * 32])  # ingested, not yet embedded
    with pytest.raises(ValueError, match="has no embedding yet: run the pipeline"):
        similar_images(catalog, "cdcd")


def test_only_the_query_embedder_version_is_compared(catalog):
    # A re-embedding under way: batch b3 has a new version, with a vector equal to the query's.
    write_images(catalog, "b3", ["ab" * 32, "cd" * 32])
    write_embeddings(catalog, "b3", {"ab" * 32: direction(0), "cd" * 32: direction(40)}, version="v2")
    with pytest.warns(MixedEmbedderVersionsWarning, match="compared only the 8 images embedded by v1, skipped 2"):
        result = similar_images(catalog, image_id("q"), k=2)
    assert result.column("image_id").to_pylist() == [image_id("a"), image_id("b")]
    with pytest.warns(MixedEmbedderVersionsWarning):
        newer = similar_images(catalog, "abab", k=5)
    assert newer.column("image_id").to_pylist() == ["cd" * 32]
    assert newer.column("distance").to_pylist() == pytest.approx([1 - math.cos(math.radians(40))])
    with pytest.raises(ValueError, match="2 embedder versions .*say which one"):
        similar_images(catalog, np.array(direction(0)))
    with pytest.warns(MixedEmbedderVersionsWarning):
        assert similar_images(catalog, np.array(direction(0)), k=1, embedder_version="v2").num_rows == 1
    with pytest.raises(ValueError, match="no image in the catalog was embedded by version v3"):
        similar_images(catalog, np.array(direction(0)), embedder_version="v3")


def test_a_catalog_without_embeddings_says_to_run_the_pipeline(tmp_path):
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    for query in ("abc", np.ones(3)):
        with pytest.raises(ValueError, match="no embeddings yet: run the pipeline first"):
            similar_images(catalog, query)
    with pytest.raises(ValueError, match="no embeddings yet: run the pipeline first"):
        embed_image_bytes(catalog, b"", {"kind": "patch-kmeans"})


def test_a_file_is_embedded_by_the_catalog_embedder_only(tmp_path):
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    files = [encode(photo(seed), "PNG") for seed in range(6)]
    embedder = PatchKMeansEmbedder.fit([photo(seed) for seed in range(6)], seed=0, **TINY_EMBEDDER)
    vectors = np.concatenate(list(embed_bytes(embedder, files)))
    ids = [f"{seed:064x}" for seed in range(6)]
    write_images(catalog, "b1", ids)
    write_embeddings(catalog, "b1", dict(zip(ids, vectors.tolist(), strict=True)), version=embedder.version)

    with pytest.raises(ValueError, match="no fitted embedder at .*models/patch-kmeans.npz: run the pipeline"):
        embed_image_bytes(catalog, files[3], {"kind": "patch-kmeans"})
    catalog.storage.write_bytes(PATCH_KMEANS_KEY, embedder.to_bytes())
    assert stored_embedder(catalog.storage, {"kind": "patch-kmeans"}).version == embedder.version
    vector, version = embed_image_bytes(catalog, files[3], {"kind": "patch-kmeans"})
    assert version == embedder.version and np.allclose(vector, vectors[3], atol=1e-5)
    nearest = similar_images(catalog, vector, k=1, embedder_version=version).to_pylist()
    assert nearest[0]["image_id"] == ids[3] and nearest[0]["distance"] == pytest.approx(0.0, abs=1e-5)

    other = PatchKMeansEmbedder.fit([photo(seed) for seed in range(6, 12)], seed=1, **TINY_EMBEDDER)
    catalog.storage.write_bytes(PATCH_KMEANS_KEY, other.to_bytes())
    with pytest.raises(ValueError, match="did not make the catalog's embeddings"):
        embed_image_bytes(catalog, files[3], {"kind": "patch-kmeans"})


def test_search_like_a_file_in_an_s3_catalog(s3_bucket, capsys):
    """Catalog, fitted model and query file all in a bucket (moto's S3 server on 127.0.0.1)."""
    from cv_dataops.core.storage import open_storage

    catalog = Catalog(open_storage(f"s3://{s3_bucket}/root"))
    files = [encode(photo(seed), "PNG") for seed in range(4)]
    embedder = PatchKMeansEmbedder.fit([photo(seed) for seed in range(4)], seed=0, **TINY_EMBEDDER)
    ids = [f"{seed:064x}" for seed in range(4)]
    write_images(catalog, "b1", ids)
    write_embeddings(catalog, "b1", dict(zip(ids, np.concatenate(list(embed_bytes(embedder, files))).tolist(),
                                             strict=True)), version=embedder.version)
    catalog.storage.write_bytes(PATCH_KMEANS_KEY, embedder.to_bytes())
    open_storage(f"s3://{s3_bucket}/queries").write_bytes("two.png", files[2])

    capsys.readouterr()
    assert search("--like", f"s3://{s3_bucket}/queries/two.png", "-k", "2", "--data-root",
                  f"s3://{s3_bucket}/root") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1].split()[1] == ids[2] and float(lines[1].split()[-1]) < 1e-4


# --- the command line, on a catalog the real pipeline built ---------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_catalog(tmp_path_factory):
    """24 generated scenes ingested and embedded by the real pipeline (a tiny built-in embedder, for speed)."""
    from cv_dataops.config import Settings
    from cv_dataops.demo import data as demo_data
    from cv_dataops.runner import open_instance, run_pipeline

    root = tmp_path_factory.mktemp("search_like")
    demo_data.generate_demo(root / "landing", count=24, seed=5, include_bad=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(root / "home"))
        instance = open_instance(str(root / "data"))
        run_pipeline(instance, landing=str(root / "landing"), data_root=str(root / "data"),
                     select=["image_embeddings"],
                     settings=Settings.build(embedder={"kind": "patch-kmeans", **TINY_EMBEDDER}))
        instance.dispose()
    return root


def test_search_like_a_file_finds_the_same_image_first(pipeline_catalog, tmp_path, capsys):
    root = pipeline_catalog
    data_root = str(root / "data")
    landed = sorted((root / "landing").rglob("*.jpg"))[7]
    out = tmp_path / "similar.json"
    assert search("--like", str(landed), "-k", "3", "--data-root", data_root, "-o", str(out)) == 0
    rows = json.loads(out.read_text())
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert rows[0]["uri"] == os.path.abspath(landed) and rows[0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert rows[1]["distance"] > 1e-3 and rows[1]["distance"] <= rows[2]["distance"]

    # The image's id (here a prefix of it) gives the same neighbours, without the image itself.
    capsys.readouterr()
    assert search("--like", rows[0]["image_id"][:12], "-k", "2", "--data-root", data_root) == 0
    printed, said = capsys.readouterr()
    assert rows[0]["image_id"] not in printed and said == f"images like {rows[0]['image_id']}\n"
    assert [line.split()[1] for line in printed.splitlines()[1:]] == [rows[1]["image_id"], rows[2]["image_id"]]


def test_search_like_errors_are_one_clear_line(pipeline_catalog, tmp_path, capsys):
    data_root = str(pipeline_catalog / "data")
    capsys.readouterr()
    assert search("--like", "0123456789abcdef", "--data-root", data_root) == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert error.startswith("cv-dataops: error: no image in the catalog has an id starting with '0123456789abcdef'")
    assert len(error.strip().splitlines()) == 1

    (tmp_path / "empty").mkdir()
    assert search("--like", "abc", "--data-root", str(tmp_path / "empty")) == cli.EXIT_FAILED
    assert "no embeddings yet: run the pipeline first" in capsys.readouterr().err

    (tmp_path / "notes.jpg").write_bytes(b"not an image at all")
    assert search("--like", str(tmp_path / "notes.jpg"), "--data-root", data_root) == cli.EXIT_USAGE
    assert "notes.jpg: cannot decode" in capsys.readouterr().err

    assert search("--like", "abc", "-k", "0", "--data-root", data_root) == cli.EXIT_USAGE
    assert "-k must be at least 1" in capsys.readouterr().err
    assert search("--sql", "SELECT 1", "-k", "3", "--data-root", data_root) == cli.EXIT_USAGE
    with pytest.raises(SystemExit):  # argparse: --sql and --like are exclusive
        search("--sql", "SELECT 1", "--like", "abc")


def test_rows_of_batches_changed_since_the_graph_was_built_do_not_crowd_out_current_ones(tmp_path):
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    near = {f"{i:064x}": direction(0.05 * i) for i in range(20)}          # nearest to the query
    far = {f"{100 + i:064x}": direction(20 + 2 * i) for i in range(30)}   # further off
    for batch, vectors in (("near", near), ("far", far)):
        write_images(catalog, batch, list(vectors))
        write_embeddings(catalog, batch, vectors)
    build_graph(catalog)
    write_embeddings(catalog, "near", near, version="v0")  # re-embedded by another embedder since
    with pytest.warns(MixedEmbedderVersionsWarning):
        result = similar_images(catalog, np.array(direction(0)), k=5, embedder_version="v1")
    assert result.column("image_id").to_pylist() == list(far)[:5]
