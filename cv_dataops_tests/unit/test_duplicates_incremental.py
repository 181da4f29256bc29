"""The incremental duplicate update, without Dagster: batch by batch equals all at once, the states name batches
(never images), blocked batches are left out, quality rows are read only for what is new and vectors one batch
file at a time, and the hash and embedding passes each keep their state when the other does not run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cv_dataops.core.storage import LocalStorage
from cv_dataops.duplicates.incremental import (
    HASH_COLUMNS,
    STATE_KEY,
    DuplicateState,
    EmbeddingSource,
    HashRowStore,
    update_duplicates,
)
from cv_dataops.duplicates.index import DuplicateSettings, find_pairs, group_duplicates


def _hashes(seed: int = 3, batches: int = 3, per_batch: int = 60) -> pd.DataFrame:
    """Random hash rows in ``batches`` batches, with near copies (a few bits flipped) and exact twins across them."""
    rng = np.random.default_rng(seed)
    n = batches * per_batch
    phash = rng.integers(0, 2 ** 64, n, dtype=np.uint64)
    dhash = rng.integers(0, 2 ** 64, n, dtype=np.uint64)
    pixel = np.array([f"p{i:04d}" for i in range(n)], dtype=object)
    for copy in range(per_batch, n, 7):  # copies of earlier images
        original = int(rng.integers(0, copy))
        phash[copy] = phash[original] ^ np.uint64(1 << int(rng.integers(0, 64)))
        dhash[copy] = dhash[original] ^ np.uint64(3 << int(rng.integers(0, 60)))
        if copy % 3 == 0:
            pixel[copy] = pixel[original]
    return pd.DataFrame({
        "image_id": [f"{i:064x}" for i in rng.permutation(10 * n)[:n]],
        "batch_id": [f"{i // per_batch + 1:08d}" for i in range(n)],
        "pixel_hash": pixel, "phash": phash, "dhash": dhash,
        "width": rng.integers(16, 64, n).astype(np.int32), "height": np.full(n, 32, np.int32),
        "jpeg_quality": np.where(rng.random(n) < 0.5, np.nan, rng.integers(50, 96, n)).astype(np.float32),
        "blurry_score": rng.random(n), "is_unusable": np.zeros(n, bool), "quality_version": "1-abc"})


def _batch_by_batch(hashes: pd.DataFrame, **options):
    state, pairs, groups, updates = None, None, None, []
    for last in sorted(set(hashes.batch_id)):
        seen = hashes[hashes.batch_id <= last]
        update = update_duplicates(state, seen, {b: "v1" for b in set(seen.batch_id)}, previous_pairs=pairs,
                                   previous_groups=groups, **options)
        state, pairs, groups = update.state, update.pairs, update.groups
        updates.append(update)
    return updates


def test_batch_by_batch_equals_all_at_once_and_the_state_names_batches():
    hashes = _hashes()
    updates = _batch_by_batch(hashes)
    assert [u.images_looked_up for u in updates] == [60, 60, 60]  # each run looks up its new batch only
    assert [u.full_rebuild for u in updates] == [True, False, False]
    final = updates[-1]
    all_at_once = find_pairs(hashes, hashes)
    assert final.pairs == all_at_once and any(p.kind == "exact" for p in all_at_once) and len(all_at_once) > 10
    expected = group_duplicates(all_at_once, hashes)
    pd.testing.assert_frame_equal(final.groups.drop(columns="group_id"), expected.drop(columns="group_id"))
    text = final.state.to_json()
    assert not any(image_id in text for image_id in hashes.image_id)  # batches, never images
    assert DuplicateState.from_json(text) == final.state
    # nothing new: nothing looked up, nothing changes
    again = update_duplicates(final.state, hashes, {b: "v1" for b in set(hashes.batch_id)},
                              previous_pairs=final.pairs, previous_groups=final.groups)
    assert again.images_looked_up == 0 and again.pairs == final.pairs
    pd.testing.assert_frame_equal(again.groups, final.groups)


def test_a_changed_batch_is_looked_up_again_and_new_settings_rebuild():
    hashes = _hashes()
    final = _batch_by_batch(hashes)[-1]
    fingerprints = {b: "v1" for b in set(hashes.batch_id)} | {"00000002": "v2"}
    update = update_duplicates(final.state, hashes, fingerprints, previous_pairs=final.pairs,
                               previous_groups=final.groups)
    assert update.images_looked_up == 60 and update.pairs == final.pairs and not update.full_rebuild
    stricter = update_duplicates(final.state, hashes, fingerprints, previous_pairs=final.pairs,
                                 settings=DuplicateSettings(total_radius=4))
    assert stricter.full_rebuild and stricter.images_looked_up == len(hashes)
    assert stricter.pairs == find_pairs(hashes, hashes, DuplicateSettings(total_radius=4))


def test_a_blocked_batch_is_left_out_until_the_rule_lets_it_in():
    hashes = _hashes()
    hashes.loc[hashes.batch_id == "00000002", "is_unusable"] = True
    updates = _batch_by_batch(hashes)
    final = updates[-1]
    blocked = set(hashes.image_id[hashes.batch_id == "00000002"])
    assert final.batches_left_out == ["00000002"] and final.images_indexed == 120
    assert not {i for p in final.pairs for i in (p.a, p.b)} & blocked
    assert not set(final.groups.image_id) & blocked
    # a laxer limit lets the batch in: its images (and only they) are looked up now
    lax = update_duplicates(final.state, hashes, {b: "v1" for b in set(hashes.batch_id)}, previous_pairs=final.pairs,
                            previous_groups=final.groups, max_unusable_rate=1.0)
    assert lax.images_looked_up == 60 and lax.batches_left_out == []
    assert lax.pairs == find_pairs(hashes, hashes)


@dataclass
class _Vectors:
    image_ids: list[str]
    batch_ids: list[str]
    matrix: np.ndarray


def test_vectors_are_read_only_for_new_embedding_batches_and_a_new_embedder_starts_them_afresh():
    hashes = _hashes(batches=2, per_batch=20)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(hashes), 8)).astype(np.float32)
    vectors[25] = vectors[3]  # a flip the hashes miss: same embedding, far hashes
    hashes.loc[25, ["phash", "dhash"]] = [np.uint64(0), np.uint64(0)]
    hashes.loc[3, ["phash", "dhash"]] = [np.uint64(2 ** 64 - 1), np.uint64(2 ** 64 - 1)]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    reads = []

    def read(batches):
        reads.append(list(batches))
        rows = hashes.batch_id.isin(batches).to_numpy()
        return _Vectors(hashes.image_id[rows].tolist(), hashes.batch_id[rows].tolist(), vectors[rows])

    def source(version, batches):
        return EmbeddingSource(version, {b: "e1" for b in batches}, read)

    first = update_duplicates(None, hashes[hashes.batch_id == "00000001"], {"00000001": "v1"},
                              embeddings=source("emb-1", ["00000001"]))
    assert reads == [["00000001"]] and first.images_looked_up_by_embedding == 20
    both = {"00000001": "v1", "00000002": "v1"}
    second = update_duplicates(first.state, hashes, both, embedding_state=first.embedding_state,
                               previous_pairs=first.pairs, previous_groups=first.groups,
                               embeddings=source("emb-1", ["00000001", "00000002"]))
    # the new batch's vectors are the queries; the catalog's are read one batch file at a time, each once
    assert reads[1:] == [["00000002"], ["00000001"]] and second.images_looked_up_by_embedding == 20
    (pair,) = [p for p in second.pairs if p.found_by == "embedding"]
    assert {pair.a, pair.b} == {hashes.image_id[3], hashes.image_id[25]}
    assert second.images_without_embedding == 0

    calls = len(reads)
    same = update_duplicates(second.state, hashes, both, embedding_state=second.embedding_state,
                             previous_pairs=second.pairs, previous_groups=second.groups,
                             embeddings=source("emb-1", ["00000001", "00000002"]))
    assert len(reads) == calls and same.pairs == second.pairs  # nothing new: no vector read
    # a new embedder whose vectors exist for batch 1 only: embedding pairs dropped, batch 1 looked up again
    other = update_duplicates(second.state, hashes, both, embedding_state=second.embedding_state,
                              previous_pairs=second.pairs, previous_groups=second.groups,
                              embeddings=source("emb-2", ["00000001"]))
    assert not other.full_rebuild and other.images_looked_up == 0 and other.images_looked_up_by_embedding == 20
    assert all(p.found_by == "hash" for p in other.pairs) and other.images_without_embedding == 20


def test_the_store_reads_a_batch_of_quality_rows_only_when_it_changed(tmp_path):
    hashes = _hashes(batches=2, per_batch=5)
    store = HashRowStore(LocalStorage(tmp_path))
    read = []

    def read_quality(batch_id):
        read.append(batch_id)
        return hashes[hashes.batch_id == batch_id].assign(extra_column=1)

    rows, refreshed = store.rows({"00000001": "a", "00000002": "a"}, read_quality)
    assert refreshed == read == ["00000001", "00000002"] and list(rows.frame().columns) == HASH_COLUMNS
    pd.testing.assert_frame_equal(rows.frame(), hashes[HASH_COLUMNS])
    rows, refreshed = store.rows({"00000001": "a", "00000002": "b"}, read_quality)
    assert refreshed == ["00000002"] and read == ["00000001", "00000002", "00000002"]
    pd.testing.assert_frame_equal(rows.frame(), hashes[HASH_COLUMNS])
    assert store.state() is None and store.embedding_state() is None
    store.save_state(DuplicateState(("1",), "s", {"00000001": "a"}))
    assert store.state().looked_up == {"00000001": "a"}
    # a state of the kind that held both passes (before they were split) still reads, as the hash pass's
    store.storage.write_text(STATE_KEY, '{"embedding": {}, "embedding_looked_up": {}, "embedding_vectors": {}, '
                                        '"looked_up": {"00000001": "a"}, "quality_versions": ["1"], "settings": "s"}')
    assert store.state() == DuplicateState(("1",), "s", {"00000001": "a"}) and store.embedding_state() is None


def test_images_measured_after_their_vectors_were_read_are_looked_up_by_embedding_then():
    hashes = _hashes(batches=2, per_batch=10)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(len(hashes), 8)).astype(np.float32)
    vectors[15] = vectors[2]  # the same picture by embedding, far by hashes
    hashes.loc[15, ["phash", "dhash"]] = [np.uint64(0), np.uint64(0)]
    hashes.loc[2, ["phash", "dhash"]] = [np.uint64(2 ** 64 - 1), np.uint64(2 ** 64 - 1)]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def read(batches):
        rows = hashes.batch_id.isin(batches).to_numpy()
        return _Vectors(hashes.image_id[rows].tolist(), hashes.batch_id[rows].tolist(), vectors[rows])

    source = EmbeddingSource("emb-1", {"00000001": "e1", "00000002": "e1"}, read)
    unmeasured = hashes.drop(index=15)  # batch 2's quality missed image 15 at first
    first = update_duplicates(None, unmeasured, {"00000001": "v1", "00000002": "v1"}, embeddings=source)
    assert not [p for p in first.pairs if p.found_by == "embedding"] and first.images_without_embedding == 0
    remeasured = update_duplicates(first.state, hashes, {"00000001": "v1", "00000002": "v2"},
                                   embedding_state=first.embedding_state, previous_pairs=first.pairs,
                                   previous_groups=first.groups, embeddings=source)
    (pair,) = [p for p in remeasured.pairs if p.found_by == "embedding"]
    assert {pair.a, pair.b} == {hashes.image_id[2], hashes.image_id[15]}


FLIPS = ((3, 40), (10, 70), (35, 80))


def _assert_same_groups(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    """The same members, kinds, kept images and distances, and the same partition into groups."""
    def by_image(groups):
        return groups.sort_values("image_id").reset_index(drop=True)

    pd.testing.assert_frame_equal(by_image(ours).drop(columns="group_id"), by_image(theirs).drop(columns="group_id"))
    assert set(ours.groupby("group_id").image_id.apply(frozenset)) == \
        set(theirs.groupby("group_id").image_id.apply(frozenset))


def _flip_catalog():
    """Three batches of hash rows and vectors; a few pairs only the embeddings find (far hashes, same vector)."""
    hashes = _hashes(batches=3, per_batch=30)
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(len(hashes), 8)).astype(np.float32)
    for original, copy in FLIPS:
        vectors[copy] = vectors[original]
        for column in ("phash", "dhash"):  # every bit differs: the hashes miss it
            hashes.loc[copy, column] = ~np.uint64(hashes.loc[original, column])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def source(batches):
        def read(wanted):
            rows = hashes.batch_id.isin(wanted).to_numpy()
            return _Vectors(hashes.image_id[rows].tolist(), hashes.batch_id[rows].tolist(), vectors[rows])
        return EmbeddingSource("emb-1", {b: "e1" for b in batches}, read)

    return hashes, source


def test_the_hash_and_embedding_passes_run_apart_in_any_order_and_after_a_kill_agree_with_both_at_once():
    from cv_dataops.duplicates.incremental import (
        group_pairs,
        update_embedding_duplicates,
        update_hash_duplicates,
    )

    hashes, source = _flip_catalog()
    batches = sorted(set(hashes.batch_id))
    everything = update_duplicates(None, hashes, {b: "v1" for b in batches}, embeddings=source(batches))
    assert sum(p.found_by == "embedding" for p in everything.pairs) == 3

    # batch by batch, the hash pass every time, the embedding pass only after the last batch (embeddings late)
    state, hash_pairs, groups = None, [], None
    for last in batches:
        seen = hashes[hashes.batch_id <= last]
        update = update_hash_duplicates(state, seen, {b: "v1" for b in set(seen.batch_id)}, previous_pairs=hash_pairs)
        state, hash_pairs = update.state, update.pairs
        _, groups = group_pairs(hash_pairs, [], update.rows, groups)
        flips = {frozenset((hashes.image_id[o], hashes.image_id[c])) for o, c in FLIPS}
        assert not flips & {frozenset((p.a, p.b)) for p in hash_pairs}  # no embedding pairs yet
    fingerprints = {b: "v1" for b in batches}
    by_embedding = update_embedding_duplicates(None, hashes, fingerprints, source(batches))
    # killed after writing its pairs, before saving its state: the next run looks the same batches up again
    again = update_embedding_duplicates(None, hashes, fingerprints, source(batches), previous_pairs=by_embedding.pairs)
    assert again.pairs == by_embedding.pairs and again.images_looked_up == len(hashes)
    # the hash pass then groups both kinds; nothing is looked up again by hash
    final = update_hash_duplicates(state, hashes, fingerprints, previous_pairs=hash_pairs)
    assert final.images_looked_up == 0
    pairs, groups = group_pairs(final.pairs, again.pairs, final.rows, groups)
    assert pairs == everything.pairs
    _assert_same_groups(groups, everything.groups)  # group names may differ: grown batch by batch

    # the other order: the embedding pass batch by batch first, the hash pass once at the end
    emb_state, emb_pairs = None, []
    for last in batches:
        seen = hashes[hashes.batch_id <= last]
        seen_batches = sorted(set(seen.batch_id))
        update = update_embedding_duplicates(emb_state, seen, {b: "v1" for b in seen_batches}, source(seen_batches),
                                             previous_pairs=emb_pairs)
        assert update.images_looked_up == 30  # only the new batch's vectors are queries
        emb_state, emb_pairs = update.state, update.pairs
    assert emb_pairs == again.pairs
    by_hash = update_hash_duplicates(None, hashes, fingerprints)
    pairs, groups = group_pairs(by_hash.pairs, emb_pairs, by_hash.rows)
    assert pairs == everything.pairs
    pd.testing.assert_frame_equal(groups, everything.groups)

    # a batch that becomes blocked leaves both passes' pairs and the groups
    blocked = hashes.assign(is_unusable=hashes.batch_id == batches[1])
    emb = update_embedding_duplicates(emb_state, blocked, fingerprints, source(batches), previous_pairs=emb_pairs)
    hashed = update_hash_duplicates(by_hash.state, blocked, fingerprints, previous_pairs=by_hash.pairs)
    pairs, groups = group_pairs(hashed.pairs, emb.pairs, hashed.rows)
    gone = set(hashes.image_id[hashes.batch_id == batches[1]])
    assert hashed.batches_left_out == [batches[1]] and not {i for p in pairs for i in (p.a, p.b)} & gone
    assert not set(groups.image_id) & gone
