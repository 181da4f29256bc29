"""Exact and near duplicate images across a growing catalog.

Every image carries, computed elsewhere from one decode at reduced size (longest side at most 256 px):

* ``pixel_hash``: SHA-256 of the decoded pixels; equal means identical pixels, an **exact** duplicate;
* ``phash`` and ``dhash``: 64-bit perceptual hashes of the luma (``imagehash.phash``/``dhash``, ``hash_size=8``).

Two images are **near** duplicates when their hashes are close in Hamming distance (see :class:`DuplicateSettings`
for the rule and the measurements behind it). A new batch is looked up, image by image, in a multi-index Hamming
index (:class:`HammingIndex`) built over the whole catalog: adding ``k`` images to a catalog of ``n`` costs a build
in O(n) plus ``k`` queries that each touch a small fraction of the catalog, never the ``(n + k)^2 / 2`` pairs of an
all-pairs comparison. The pairs found are kept by the caller; :func:`group_duplicates` turns all pairs found so far
into groups (union-find) with one image to keep per group, the original as far as the files tell (:data:`KEEP_RULE`).
:func:`find_embedding_pairs_in_chunks` adds the pairs the hashes miss, by embedding distance, reading the catalog's
vectors one chunk at a time.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from cv_dataops.core.graph import connected_components
from cv_dataops.embeddings.neighbors import NeighborIndex

_U64 = np.uint64
_MASK64 = (1 << 64) - 1

# Candidates (query, row) gathered at once while querying: bounds the index's working memory (about 45 bytes each,
# so some 50 MB at most, whatever the catalog's size).
CANDIDATE_BLOCK = 1 << 20
# Substring keys looked up at once (queries x neighbour keys of one table).
KEY_BLOCK = 1 << 20
# Substrings of at most this many bits are looked up in a direct-address table (2^bits + 1 offsets); longer ones by
# binary search.
DIRECT_ADDRESS_BITS = 20


@dataclass(frozen=True)
class DuplicateSettings:
    """When two images count as near duplicates: all three Hamming-distance limits hold.

    ``phash_distance <= phash_radius and dhash_distance <= dhash_radius and
    phash_distance + dhash_distance <= total_radius``

    The defaults come from an experiment with the hash definition of the catalog (longest side reduced to 256 px,
    ``imagehash`` phash/dhash of the luma with ``hash_size=8``) on real photos: the 3,000 CIFAR-10 training images
    of ``shared/datasets/cifar10-sample`` (32x32 JPEG) and scikit-image's photos (14 of 172 to 1411 px for the
    crop; 17 images, 3 of them textures, for the rest), each against a copy resized to half, re-compressed as JPEG
    quality 50, cropped by 5 % per side and resized back, made 20 % brighter, and with hue turned 30 degrees and
    saturation x1.3 (recall: the share of copies paired with their original). Negatives are all 7,998,000 pairs
    of the 4,000 distinct CIFAR images (train and test).

    ===========================  ==========  ========  ===========  ==========  ===========  ====================
    rule                         half, JPEG  bright.   colour       crop 5 %    pairs among  pairs among all 4000
                                 50 (both)   CIFAR     CIFAR        CIFAR/skim  1000 test    (of which real dups)
    ===========================  ==========  ========  ===========  ==========  ===========  ====================
    phash <= 10 and dhash <= 10  >= 0.999    0.995     0.959        0.40/0.36   0            4 (4)
    phash <= 12 and dhash <= 12  1.000       0.997     0.977        0.66/0.57   0            7 (5)
    phash <= 14 and dhash <= 14  1.000       0.998     0.985        0.85/0.71   0            18
    phash + dhash <= 24 alone    1.000       1.000     0.988        0.81/0.71   0            9 (7)
    **defaults** 16, 16, 24      1.000       1.000     0.987        0.81/0.71   0            9 (7)
    ===========================  ==========  ========  ===========  ==========  ===========  ====================

    The two hashes err on different pairs, so a limit on their *sum* separates better than one radius on each:
    at the same number of false pairs as ``12 and 12`` it finds a quarter more of the 5 % crops. The "pairs among
    all 4000" were looked at: 7 of the 9 are true CIFAR-10 near duplicates (the same photo twice, some across the
    train/test split); 2 are different horses in the same pose, i.e. a rate of about 2.5e-7 per pair of
    unrelated images. That rate is what the catalog pays as it grows (about 1,250 wrong pairs among 100,000 images
    of that kind); tighten ``total_radius`` (e.g. 20) for a catalog of many near-identical scenes. A crop of 5 %
    per side (a 10 % zoom) is at the edge of what a 64-bit DCT hash tolerates: recall there is 0.8 on CIFAR and
    0.7 on larger photos, against 1.0 for crops of 1-3 % per side (CIFAR, and every scikit-image image but a
    periodic brick-wall texture). The scikit-image photos lose nothing to photometric changes (all found). The
    per-hash caps (16) only cut off lopsided pairs where one hash is far: on this data one true crop pair and one
    colour pair in 3,000, and no false one.

    **The radii above are caps; what decides is local.** On a catalog whose distinct images are close to each
    other (64x64 upscaled handwritten digits: half of them have another digit within 16 bits), absolute radii pair
    almost everything. So a near pair must also pass a ratio test: its ``phash + dhash`` distance is at most
    ``scale_ratio`` times the pair's *local scale*, the smaller of its two images' distances to their
    ``scale_neighbours``-th nearest image among the catalog's first ``scale_reference`` images (its earliest
    batches). A copy is much closer to its original than the original's tenth nearest other image; two different
    "1"s are not. ``bench/fit_duplicate_radii.py`` fitted ``scale_ratio`` on the digits and scored it on CIFAR-10
    (two splits), photo tiles and the scenes demo it never saw (docs/benchmarks.md "duplicate-radii"): precision
    0.98 or more on every one, recall lower than the absolute radii alone on CIFAR (they pair nothing distinct
    there, but pair 15,000 distinct digits). ``scale_ratio=None`` turns the ratio test off. A catalog with no more
    than ``scale_neighbours`` images has no local scale yet: the caps alone decide.

    ``max_neighbors`` bounds what one new image adds to the pair table: its closest near duplicates and its
    exact twins (smallest ids first), at most this many of each. Groups are found through the pairs, so the
    cap changes nothing until an image has more duplicates than that; it keeps a degenerate catalog (thousands
    of blank frames, all with phash 0) from writing a quadratic number of pairs. ``None`` turns it off.
    """

    phash_radius: int = 16
    dhash_radius: int = 16
    total_radius: int | None = 24
    max_neighbors: int | None = 100
    scale_ratio: float | None = 0.25
    scale_neighbours: int = 10
    scale_reference: int = 2000

    def __post_init__(self):
        _check_scale(self.scale_ratio, self.scale_neighbours, self.scale_reference, "scale_ratio")
        for name in ("phash_radius", "dhash_radius"):
            value = getattr(self, name)
            if not 0 <= value <= 64:
                raise ValueError(f"{name} must be in 0..64, not {value}")
        if self.total_radius is not None and self.total_radius < 0:
            raise ValueError(f"total_radius must be >= 0, not {self.total_radius}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1 or None, not {self.max_neighbors}")

    def is_near(self, phash_distance, dhash_distance):
        """The rule, on scalars or numpy arrays of distances."""
        near = (phash_distance <= self.phash_radius) & (dhash_distance <= self.dhash_radius)
        if self.total_radius is not None:
            near = near & (phash_distance + dhash_distance <= self.total_radius)
        return near

    def index_radii(self) -> tuple[int, int | None]:
        """The radii to look up on the phash and on the dhash so that every near pair is found by at least one.

        Without a useful ``total_radius`` the phash alone, at ``phash_radius``. With one, a near pair has
        ``min(phash, dhash) <= total_radius // 2``: the phash is looked up at ``p = min(phash_radius, total // 2)``
        and the dhash at ``min(dhash_radius, total - p - 1)`` (a pair missed on the phash has phash > p, so dhash
        < total - p). Two small radii cost far less than one large one (the candidates grow steeply with the
        radius).
        """
        total = self.total_radius
        if total is None or total >= self.phash_radius + self.dhash_radius or self.phash_radius <= total // 2:
            return min(self.phash_radius, total if total is not None else 64), None
        p = total // 2
        d = min(self.dhash_radius, total - p - 1)
        return p, (d if d >= 0 else None)


def _check_scale(ratio: float | None, neighbours: int, reference: int, name: str) -> None:
    if ratio is not None and not 0.0 < ratio <= 10.0:
        raise ValueError(f"{name} must be in (0, 10] or None, not {ratio}")
    if neighbours < 1:
        raise ValueError(f"scale_neighbours must be >= 1, not {neighbours}")
    if reference < neighbours + 1:
        raise ValueError(f"scale_reference must exceed scale_neighbours, not {reference}")


def kth_smallest(distances: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k``-th smallest value (``inf`` where a row has fewer than ``k`` finite values)."""
    distances = np.asarray(distances, dtype=np.float64)
    if distances.shape[1] < k:
        return np.full(len(distances), np.inf)
    return np.partition(distances, k - 1, axis=1)[:, k - 1]


def hash_scales(phash: np.ndarray, dhash: np.ndarray, rows: np.ndarray, reference: int, k: int) -> np.ndarray:
    """The local hash scale of rows ``rows`` (of the aligned ``phash``/``dhash`` codes): the ``k``-th smallest
    ``phash + dhash`` distance to the first ``reference`` rows, the row itself left out (see
    :class:`DuplicateSettings`). O(len(rows) x reference)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.full(len(rows), np.inf)
    ref = np.arange(min(reference, len(phash)))
    if len(ref) <= k or not len(rows):
        return out
    for start in range(0, len(rows), 1024):
        block = rows[start:start + 1024]
        total = (popcount(phash[block, None] ^ phash[None, ref]).astype(np.float64)
                 + popcount(dhash[block, None] ^ dhash[None, ref]))
        total[block[:, None] == ref[None, :]] = np.inf  # not its own neighbour
        out[start:start + 1024] = kth_smallest(total, k)
    return out


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each ``uint64``, as ``uint8`` (``np.bitwise_count`` on numpy 2, a byte table before)."""
    values = np.asarray(values, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    per_byte = _BYTE_POPCOUNT[np.ascontiguousarray(values).view(np.uint8)]
    return per_byte.reshape(*values.shape, 8).sum(axis=-1, dtype=np.uint8)


def as_codes(values, bits: int = 64) -> np.ndarray:
    """64-bit codes as ``uint64``, from unsigned or signed (two's complement) integers, Python ints or hex strings."""
    if isinstance(values, (pd.Series, pd.Index)):
        if values.isna().any():
            raise ValueError("hash codes must not be missing")
        if pd.api.types.is_unsigned_integer_dtype(values.dtype):
            values = values.to_numpy(dtype=np.uint64)
        elif pd.api.types.is_signed_integer_dtype(values.dtype):
            values = values.to_numpy(dtype=np.int64)
        elif pd.api.types.is_float_dtype(values.dtype):
            raise TypeError("hash codes must be integers or hex strings, not floats (64-bit codes do not fit)")
        else:
            values = values.to_numpy(dtype=object)
    array = np.asarray(values)
    if array.dtype == np.uint64:
        codes = array
    elif array.dtype.kind in "iu":
        codes = array.astype(np.int64, copy=False).view(np.uint64) if array.dtype.kind == "i" else \
            array.astype(np.uint64)
    elif array.dtype.kind in "OUS":
        codes = np.fromiter(((int(v, 16) if isinstance(v, (str, bytes)) else int(v)) & _MASK64 for v in array.ravel()),
                            dtype=np.uint64, count=array.size).reshape(array.shape)
    else:
        raise TypeError(f"hash codes must be integers or hex strings, not {array.dtype}")
    codes = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
    if bits < 64 and codes.size and int((codes >> _U64(bits)).max()) != 0:
        raise ValueError(f"a code has bits set beyond the first {bits}")
    return codes


def _split(bits: int, parts: int) -> list[tuple[int, int]]:
    """(shift, width) of ``parts`` disjoint substrings covering ``bits``, as even as possible."""
    base, extra = divmod(bits, parts)
    widths = [base + 1] * extra + [base] * (parts - extra)
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
    return list(zip(shifts, widths))


def _ball(width: int, radius: int) -> int:
    return sum(math.comb(width, i) for i in range(min(radius, width) + 1))


def _flips(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit mask with at most ``radius`` bits set (the XORs reaching a substring's neighbours)."""
    masks = [0]
    for k in range(1, min(radius, width) + 1):
        masks.extend(sum(1 << i for i in combo) for combo in combinations(range(width), k))
    return np.array(masks, dtype=np.uint64)


class _Table:
    """One substring of every code, sorted: the rows whose substring equals a key are ``order[start:end]``."""

    def __init__(self, codes: np.ndarray, shift: int, width: int):
        self.shift, self.width = shift, width
        self.mask = _U64((1 << width) - 1) if width < 64 else _U64(_MASK64)
        keys = (codes >> _U64(shift)) & self.mask
        if width <= 16:  # numpy's stable sort is a radix sort on 16-bit integers: O(n)
            keys = keys.astype(np.uint16 if width > 8 else np.uint8)
        self.order = np.argsort(keys, kind="stable")
        if len(codes) < 2 ** 31:
            self.order = self.order.astype(np.int32)  # half the index's memory
        self.direct = width <= DIRECT_ADDRESS_BITS
        if self.direct:
            counts = np.bincount(keys.astype(np.int64), minlength=1 << width)
            self.offsets = np.zeros((1 << width) + 1, dtype=np.int64)
            np.cumsum(counts, out=self.offsets[1:])
        else:
            self.sorted_keys = keys[self.order]

    def key(self, codes: np.ndarray) -> np.ndarray:
        return (codes >> _U64(self.shift)) & self.mask

    def ranges(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.direct:
            k = keys.astype(np.int64)
            return self.offsets[k], self.offsets[k + 1]
        return (np.searchsorted(self.sorted_keys, keys, side="left"),
                np.searchsorted(self.sorted_keys, keys, side="right"))


class HammingIndex:
    """Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index hashing",
    CVPR 2012) over ``bits``-bit codes, for queries within Hamming ``radius``.

    The codes are split into ``m`` disjoint substrings, one hash table each. By pigeonhole, a code within distance
    ``r`` of the query is within ``r // m`` of it on at least one substring: each table is looked up with the
    query's substring and its neighbours within ``r // m`` bits, and the candidates are verified with the full
    popcount distance. With ``m = radius + 1`` (the classic form, ``substrings=radius + 1``) a candidate must match
    one substring exactly: a single lookup per table, but substrings of ``64 / (r + 1)`` bits are short (5 bits at
    r = 12), so each lookup returns a large share of the catalog. By default ``m`` is chosen when the tables are
    built, from the number of codes: the ``m`` in ``1..radius + 1`` minimising lookups plus expected candidates
    (for uniform codes) - ``radius + 1`` for small catalogs, about ``64 / log2(n)`` substrings for large ones,
    as the paper advises. Results are identical for every ``m``.

    Build: a stable radix sort per table, O(n) (tables are rebuilt lazily after :meth:`add`). Query: O(lookups +
    candidates), vectorised over many queries in :meth:`query_many`, in blocks that bound memory.
    """

    def __init__(self, radius: int, bits: int = 64, substrings: int | None = None):
        if not 1 <= bits <= 64:
            raise ValueError(f"bits must be in 1..64, not {bits}")
        if not 0 <= radius <= bits:
            raise ValueError(f"radius must be in 0..{bits}, not {radius}")
        if substrings is not None and not 1 <= substrings <= min(radius + 1, bits):
            raise ValueError(f"substrings must be in 1..{min(radius + 1, bits)}, not {substrings}")
        self.radius, self.bits, self.substrings = radius, bits, substrings
        self._id_chunks: list[Sequence[str]] = []  # as given: a catalog's ids are not copied into Python strings
        self._id_list: list[str] | None = []
        self._size = 0
        self._parts: list[np.ndarray] = []
        self._codes = np.empty(0, dtype=np.uint64)
        self._tables: list[_Table] | None = None
        self._flips: dict[tuple[int, int], np.ndarray] = {}
        self.candidates_checked = 0  # verified candidates over the index's life, for benchmarks

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"HammingIndex(radius={self.radius}, bits={self.bits}, n={len(self)})"

    @property
    def ids(self) -> list[str]:
        """The ids in insertion order (``rows`` of :meth:`query_many` index it)."""
        if self._id_list is None:
            self._id_list = [str(i) for chunk in self._id_chunks for i in chunk]
        return self._id_list

    @property
    def codes(self) -> np.ndarray:
        self._consolidate()
        return self._codes

    def add(self, ids: Sequence[str], codes) -> None:
        codes = as_codes(codes, self.bits)
        if len(ids) != len(codes):
            raise ValueError(f"{len(ids)} ids for {len(codes)} codes")
        self._id_chunks.append(ids)
        self._id_list = None
        self._size += len(codes)
        self._parts.append(codes)
        self._tables = None

    def _consolidate(self) -> None:
        if self._parts:
            self._codes = np.concatenate([self._codes, *self._parts])
            self._parts = []

    def choose_substrings(self, n: int) -> int:
        """The number of substrings ``m`` minimising lookups + expected candidates per query for ``n`` codes."""
        if self.substrings is not None:
            return self.substrings
        best, best_cost = 1, math.inf
        for m in range(1, min(self.radius + 1, self.bits) + 1):
            widths = [w for _, w in _split(self.bits, m)]
            sub = self.radius // m
            lookups = sum(_ball(w, sub) for w in widths)
            if lookups > 200_000:
                continue
            candidates = sum(_ball(w, sub) * n / 2.0 ** w for w in widths)
            lookup_cost = 1.0 if max(widths) <= DIRECT_ADDRESS_BITS else 1.0 + math.log2(max(n, 2)) / 4
            cost = lookups * lookup_cost + candidates
            if cost < best_cost:
                best, best_cost = m, cost
        return best

    def _build(self) -> list[_Table]:
        if self._tables is None:
            self._consolidate()
            m = self.choose_substrings(len(self._codes))
            self._tables = [_Table(self._codes, shift, width) for shift, width in _split(self.bits, m)]
        return self._tables

    def _neighbour_masks(self, width: int, radius: int) -> np.ndarray:
        if (width, radius) not in self._flips:
            self._flips[(width, radius)] = _flips(width, radius)
        return self._flips[(width, radius)]

    def query(self, code: int, radius: int | None = None) -> list[tuple[str, int]]:
        """Every indexed ``(id, distance)`` within ``radius`` (default: the index's) of ``code``, nearest first
        (ties in insertion order). Nothing is excluded: a code that is in the index finds itself at distance 0."""
        _, rows, distances = self.query_many(np.array([int(code) & _MASK64], dtype=np.uint64), radius)
        ids = self.ids
        return [(ids[r], int(d)) for r, d in zip(rows.tolist(), distances.tolist())]

    def query_many(self, codes, radius: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All matches of many queries at once: ``(query_positions, rows, distances)``, sorted by query, then
        distance, then row. ``rows`` are positions in insertion order (``index.ids[row]`` is the id)."""
        radius = self.radius if radius is None else radius
        if not 0 <= radius <= self.radius:
            raise ValueError(f"this index answers radii up to {self.radius}, not {radius}")
        queries = as_codes(codes, self.bits)
        empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8))
        if not len(queries) or not len(self):
            return empty
        tables = self._build()
        sub = radius // len(tables)
        found_q, found_r, found_d = [], [], []
        for table in tables:
            flips = self._neighbour_masks(table.width, sub)
            per_block = max(1, KEY_BLOCK // len(flips))
            for start in range(0, len(queries), per_block):
                block = np.arange(start, min(start + per_block, len(queries)))
                keys = (table.key(queries[block])[:, None] ^ flips[None, :]).ravel()
                key_query = np.repeat(block, len(flips))
                lo, hi = table.ranges(keys)
                counts = hi - lo
                hit = counts > 0
                lo, counts, key_query = lo[hit], counts[hit], key_query[hit]
                for q, r, d in self._verify(queries, table, key_query, lo, counts, radius):
                    found_q.append(q)
                    found_r.append(r)
                    found_d.append(d)
        if not found_q:
            return empty
        q, r, d = np.concatenate(found_q), np.concatenate(found_r).astype(np.int64), np.concatenate(found_d)
        # A code close to the query on several substrings is found by several tables: keep one of each.
        order = np.lexsort((r, d, q))
        q, r, d = q[order], r[order], d[order]
        keep = np.ones(len(q), dtype=bool)
        keep[1:] = (q[1:] != q[:-1]) | (r[1:] != r[:-1])
        if not keep.all():  # duplicates share (q, d) so they are adjacent after the sort by (q, d, r)
            q, r, d = q[keep], r[keep], d[keep]
        return q, r, d

    def _verify(self, queries, table, key_query, lo, counts, radius):
        """Expand key ranges into candidate rows in blocks of at most ``CANDIDATE_BLOCK``; yield those within
        ``radius`` of their query."""
        if not len(counts):
            return
        ends = np.cumsum(counts)
        start = 0
        while start < len(counts):
            base = int(ends[start - 1]) if start else 0
            stop = int(np.searchsorted(ends, base + CANDIDATE_BLOCK, side="right"))
            stop = max(stop, start + 1)
            c = counts[start:stop]
            total = int(c.sum())
            offsets = np.repeat(lo[start:stop] - (np.cumsum(c) - c), c) + np.arange(total)
            rows = table.order[offsets]
            q = np.repeat(key_query[start:stop], c)
            distances = popcount(self._codes[rows] ^ queries[q])
            self.candidates_checked += total
            near = distances <= radius
            if near.any():
                yield q[near], rows[near], distances[near]
            start = stop


@dataclass(frozen=True)
class DuplicatePair:
    """Two images showing the same picture: ``kind`` is ``exact`` (identical pixels) or ``near``; ``found_by`` is
    ``hash`` (pixel or perceptual hashes) or ``embedding`` (:func:`find_embedding_pairs`)."""

    a: str
    b: str
    kind: str
    distance: int  # phash Hamming distance (0 for exact)
    found_by: str = "hash"
    embedding_distance: float | None = None  # cosine distance, for pairs found by embedding


_HASH_COLUMNS = ("image_id", "pixel_hash", "phash", "dhash")


def as_ids(values) -> np.ndarray:
    """Image ids (or pixel hashes) as one compact numpy bytes array (``S`` dtype: no Python object per id; bytes
    sort as the ASCII strings do). Ids are ASCII (hex digests in the catalog)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "S":
        return values
    if isinstance(values, (pd.Series, pd.Index)):
        values = values.astype(str).to_numpy(dtype=object)
    values = np.asarray(values, dtype=object)
    if not len(values):
        return np.empty(0, dtype="S1")
    return np.array([str(v).encode("ascii") for v in values.tolist()])


def as_text(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class HashCodes:
    """The hashes of many images, aligned arrays: ``image_id`` and ``pixel_hash`` as :func:`as_ids` bytes,
    ``phash`` and ``dhash`` as ``uint64``. What :func:`find_pairs` and :func:`find_embedding_pairs` compare; a
    catalog's worth costs about 150 bytes an image and no Python object per image."""

    image_id: np.ndarray
    pixel_hash: np.ndarray
    phash: np.ndarray
    dhash: np.ndarray

    def __len__(self) -> int:
        return len(self.image_id)

    @functools.cached_property
    def lookup(self) -> IdLookup:
        """Positions of ids in these rows (built once)."""
        return IdLookup(self.image_id)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, what: str = "hashes") -> HashCodes:
        """From a frame with columns ``image_id, pixel_hash, phash, dhash`` (hashes as unsigned or signed 64-bit
        integers or hex strings); a repeated id keeps its last row."""
        missing = [c for c in _HASH_COLUMNS if c not in frame.columns]
        if missing and not frame.empty:
            raise KeyError(f"{what} lacks column(s) {missing}; it needs {list(_HASH_COLUMNS)}")
        if frame.empty:
            return cls.empty()
        codes = cls(as_ids(frame["image_id"]), as_ids(frame["pixel_hash"]), as_codes(frame["phash"]),
                    as_codes(frame["dhash"]))
        return codes.last_of_each_id()

    @classmethod
    def empty(cls) -> HashCodes:
        return cls(np.empty(0, "S1"), np.empty(0, "S1"), np.empty(0, np.uint64), np.empty(0, np.uint64))

    def take(self, rows) -> HashCodes:
        return HashCodes(self.image_id[rows], self.pixel_hash[rows], self.phash[rows], self.dhash[rows])

    def last_of_each_id(self) -> HashCodes:
        reverse = self.image_id[::-1]
        _, first = np.unique(reverse, return_index=True)
        if len(first) == len(self):
            return self
        return self.take(np.sort(len(self) - 1 - first))

    @staticmethod
    def concat(parts: Sequence[HashCodes]) -> HashCodes:
        parts = [p for p in parts if len(p)]
        if not parts:
            return HashCodes.empty()
        return HashCodes(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("image_id", "pixel_hash", "phash", "dhash")))


class IdLookup:
    """Positions of ids in an array of ids, by binary search over one sorted copy (no dict of Python strings)."""

    def __init__(self, ids: np.ndarray):
        self.ids = as_ids(ids)
        self.order = np.argsort(self.ids, kind="stable")
        self.sorted = self.ids[self.order]

    def positions(self, ids) -> np.ndarray:
        """The position of each id in the array, -1 where absent."""
        ids = as_ids(ids)
        if not len(self.sorted) or not len(ids):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.sorted, ids), len(self.sorted) - 1)
        return np.where(self.sorted[at] == ids, self.order[at], -1).astype(np.int64)


def find_pairs(new: pd.DataFrame | HashCodes, catalog: pd.DataFrame | HashCodes,
               settings: DuplicateSettings | None = None, *,
               index_factory: Callable[[int], HammingIndex] = HammingIndex) -> list[DuplicatePair]:
    """The duplicate pairs that involve at least one image of ``new``, against ``catalog`` and each other.

    ``new`` and ``catalog`` are :class:`HashCodes` or frames with columns ``image_id, pixel_hash, phash, dhash``
    (more are ignored; hashes as unsigned or signed 64-bit integers or hex strings); ``catalog`` may or may not
    already hold the new rows (a new row wins over a catalog row with the same id). An image is never paired with
    itself and each unordered pair is reported once, as ``a < b``; the list is sorted. Exact pairs come from the
    ``pixel_hash`` es the new rows share with the catalog; near pairs from :class:`HammingIndex` es over the
    catalog plus the new rows (on the phash, and on the dhash when :meth:`DuplicateSettings.index_radii` asks for
    it), queried with the new rows only. Exact twins are reported as exact only. See :class:`DuplicateSettings`
    for the rule and ``max_neighbors``.

    Cost: O(n) to build the indexes over the n catalog rows, plus one lookup per new row touching a few percent of
    the catalog (measured in ``bench/duplicates_scale.py``); memory O(n) for the indexes (about 60 bytes a row for
    the two) plus a working set bounded by ``CANDIDATE_BLOCK``.
    """
    settings = settings or DuplicateSettings()
    new_rows = new if isinstance(new, HashCodes) else HashCodes.from_frame(new, "new")
    if not len(new_rows):
        return []
    old_rows = catalog if isinstance(catalog, HashCodes) else HashCodes.from_frame(catalog, "catalog")
    overlap = np.isin(old_rows.image_id, new_rows.image_id)
    if overlap.any():
        old_rows = old_rows.take(~overlap)
    n_old, n_new = len(old_rows), len(new_rows)
    queries = np.arange(n_old, n_old + n_new)
    cap = settings.max_neighbors
    pairs: dict[tuple[str, str], DuplicatePair] = {}

    # Exact: every other image with the same pixels (smallest ids first, at most ``cap``), among the few catalog
    # rows that share a pixel hash with a new row.
    new_ids = [as_text(i) for i in new_rows.image_id.tolist()]
    new_pixels = new_rows.pixel_hash.tolist()
    shared = np.flatnonzero(np.isin(old_rows.pixel_hash, new_rows.pixel_hash))
    members: dict[bytes | str, list[str]] = {}
    for image_id, pixel in zip([*(as_text(i) for i in old_rows.image_id[shared].tolist()), *new_ids],
                               [*old_rows.pixel_hash[shared].tolist(), *new_pixels]):
        members.setdefault(pixel, []).append(image_id)
    for image_id, pixel in zip(new_ids, new_pixels):
        if len(members[pixel]) < 2:
            continue
        twins = sorted(t for t in members[pixel] if t != image_id)
        for twin in twins[:cap] if cap is not None else twins:
            a, b = (image_id, twin) if image_id < twin else (twin, image_id)
            pairs[(a, b)] = DuplicatePair(a, b, "exact", 0)

    # Near: look the new images up in indexes of everything, on the phash and, if needed, on the dhash.
    phash = np.concatenate([old_rows.phash, new_rows.phash])
    dhash = np.concatenate([old_rows.dhash, new_rows.dhash])
    found_q, found_r = [], []
    for codes, radius in zip((phash, dhash), settings.index_radii()):
        if radius is None:
            continue
        index = index_factory(radius)
        index.add(old_rows.image_id, codes[:n_old])
        index.add(new_rows.image_id, codes[n_old:])
        q, r, _ = index.query_many(codes[queries], radius)
        found_q.append(queries[q])
        found_r.append(r)
    q, r = np.concatenate(found_q), np.concatenate(found_r)
    if len(q):
        key = np.unique(q * (n_old + n_new) + r)  # found on both hashes: once
        q, r = key // (n_old + n_new), key % (n_old + n_new)
        dp = popcount(phash[q] ^ phash[r]).astype(np.int64)
        dd = popcount(dhash[q] ^ dhash[r]).astype(np.int64)
        keep = (q != r) & settings.is_near(dp, dd)
        q, r, dp, dd = q[keep], r[keep], dp[keep], dd[keep]
        if settings.scale_ratio is not None and len(q):
            involved, at = np.unique(np.concatenate([q, r]), return_inverse=True)
            scale = hash_scales(phash, dhash, involved, settings.scale_reference, settings.scale_neighbours)
            local = np.minimum(scale[at[:len(q)]], scale[at[len(q):]])
            keep = (dp + dd) <= settings.scale_ratio * local
            q, r, dp, dd = q[keep], r[keep], dp[keep], dd[keep]
        near = pd.DataFrame({"q": q, "other": [as_text(i) for i in _take(old_rows.image_id, new_rows.image_id, r)],
                             "dp": dp, "total": dp + dd})
        near = near[_take(old_rows.pixel_hash, new_rows.pixel_hash, q)
                    != _take(old_rows.pixel_hash, new_rows.pixel_hash, r)]
        near = near.sort_values(["q", "total", "dp", "other"], kind="stable")
        if cap is not None:
            near = near[near.groupby("q").cumcount() < cap]
        for query, other, distance in zip(near.q.tolist(), near.other.tolist(), near.dp.tolist()):
            image_id = new_ids[query - n_old]
            a, b = (image_id, other) if image_id < other else (other, image_id)
            pairs.setdefault((a, b), DuplicatePair(a, b, "near", int(distance)))
    return [pairs[key] for key in sorted(pairs)]


def _take(old: np.ndarray, new: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Values at positions ``rows`` of old followed by new."""
    rows = np.asarray(rows, dtype=np.int64)
    is_old = rows < len(old)
    width = max(old.dtype.itemsize, new.dtype.itemsize)
    out = np.empty(len(rows), dtype=f"S{max(width, 1)}")
    out[is_old] = old[rows[is_old]]
    out[~is_old] = new[rows[~is_old] - len(old)]
    return out


GROUP_COLUMNS = ["image_id", "group_id", "kind", "keep", "nearest_distance"]

# Which member of a duplicate group is kept, in order (see group_duplicates).
KEEP_RULE = ("highest resolution (width x height)", "least compressed (not JPEG, then the highest estimated JPEG "
             "quality)", "earliest landed (smallest batch_id)", "sharpest (highest blurry_score)",
             "smallest image_id")
# The compression rank of a file that is not JPEG (no quality estimate): above any JPEG quality (1..100).
LOSSLESS = 101.0


def pairs_frame(pairs: Iterable[DuplicatePair] | pd.DataFrame) -> pd.DataFrame:
    """Pairs as a frame with columns ``a, b, kind, distance`` (from DuplicatePairs, or a frame with those columns
    or the catalog's ``image_id_a, image_id_b, kind, distance``)."""
    if isinstance(pairs, pd.DataFrame):
        frame = pairs.rename(columns={"image_id_a": "a", "image_id_b": "b"})[["a", "b", "kind", "distance"]]
    else:
        a, b, kind, distance = [], [], [], []
        for p in pairs:
            a.append(p.a)
            b.append(p.b)
            kind.append(p.kind)
            distance.append(p.distance)
        frame = pd.DataFrame({"a": pd.Series(a, dtype=object), "b": pd.Series(b, dtype=object),
                              "kind": pd.Series(kind, dtype=object), "distance": np.asarray(distance, dtype=np.int64)})
    return frame[frame.a != frame.b].reset_index(drop=True)  # an image is no duplicate of itself


def _group_id(founder: str) -> str:
    return "dup-" + hashlib.sha256(founder.encode()).hexdigest()[:12]


def _inherited_names(members: pd.DataFrame, previous: pd.DataFrame, fresh: dict[int, str]) -> dict[int, str]:
    """Group names carried over from ``previous``: each group takes the previous id most of its members had."""
    before = previous[["image_id", "group_id"]].drop_duplicates("image_id", keep="last")
    before = before.assign(image_id=before.image_id.astype(str), group_id=before.group_id.astype(str))
    votes = members.merge(before, on="image_id", how="inner").groupby(["root", "group_id"]).size()
    votes = votes.reset_index(name="n").sort_values(["n", "group_id", "root"], ascending=[False, True, True])
    names: dict[int, str] = {}
    taken: set[str] = set()
    for root, group_id in zip(votes.root.tolist(), votes.group_id.tolist()):
        if root not in names and group_id not in taken:
            names[root] = group_id
            taken.add(group_id)
    for root, name in fresh.items():  # a part split off a previous group may have that group's founder
        if root not in names and name in taken:
            names[root] = _group_id(f"{name}/{root}")
    return names


def group_duplicates(pairs: Iterable[DuplicatePair] | pd.DataFrame, quality: pd.DataFrame | None = None,
                     previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """Duplicate groups from all pairs found so far: one row per image in a group of two or more.

    Columns: ``image_id``; ``group_id``; ``kind`` (``exact`` when the image has an exact twin in its group - an
    exact pair, or the same ``pixel_hash`` as another member when ``quality`` has that column - else ``near``);
    ``keep`` (exactly one per group); ``nearest_distance`` (smallest phash distance to another member it is paired
    with; 0 for an exact twin).

    ``quality`` (optional) has ``image_id`` and any of ``width, height, jpeg_quality, blurry_score, batch_id,
    pixel_hash``. The member kept is the original as far as the files tell (:data:`KEEP_RULE`): the highest
    resolution (width x height), then the least compressed (a file that is not JPEG, ``jpeg_quality`` empty,
    counts as lossless and beats any JPEG; JPEGs by their estimated quality), then the earliest landed (smallest
    ``batch_id``), then the sharpest (highest ``blurry_score``), then the smallest ``image_id``; a missing column
    decides nothing. So a downscaled copy loses on resolution, a re-compressed quality-70 copy on compression, and
    a mirror image (same size, same compression) to the copy that landed first; within one batch nothing says
    which landed first, and the smallest id decides.

    ``group_id`` is ``dup-`` + 12 hex digits of the SHA-256 of the group's *founder*: its member from the earliest
    batch (smallest ``batch_id``, as batch ids sort in the order batches were made), ties and images without a
    batch broken by the smallest ``image_id``. A group therefore keeps its id as later batches add members; when
    two groups merge, the older one's id wins. (The smallest ``image_id`` alone would not be stable: image ids are
    random, so a new member would take over with probability 1/(size + 1).) An image of an earlier batch that had
    no duplicate until now can still become a group's founder; pass ``previous`` (the last result, columns
    ``image_id, group_id``) to rule that out: a group then keeps the previous id most of its members had (ties:
    the smallest id; each previous id goes to one group only), and only groups with no previous member are named
    after their founder.
    """
    frame = pairs_frame(pairs)
    if frame.empty:
        return pd.DataFrame({"image_id": pd.Series(dtype=str), "group_id": pd.Series(dtype=str),
                             "kind": pd.Series(dtype=str), "keep": pd.Series(dtype=bool),
                             "nearest_distance": pd.Series(dtype=np.int32)})
    ends = np.concatenate([frame.a.to_numpy(dtype=object), frame.b.to_numpy(dtype=object)])
    codes, nodes = pd.factorize(ends)
    m = len(frame)
    a, b = codes[:m], codes[m:]
    n = len(nodes)
    root = connected_components(a, b, n)

    distance = frame.distance.to_numpy(dtype=np.int64)
    exact_edge = (frame.kind == "exact").to_numpy()
    distance = np.where(exact_edge, 0, distance)
    nearest = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(nearest, a, distance)
    np.minimum.at(nearest, b, distance)
    has_exact = np.zeros(n, dtype=bool)
    has_exact[a[exact_edge]] = True
    has_exact[b[exact_edge]] = True

    image_ids = np.asarray(nodes).astype(str).astype(object)
    id_rank = np.empty(n, dtype=np.int64)
    id_rank[np.argsort(image_ids.astype(str), kind="stable")] = np.arange(n)
    info = pd.DataFrame(index=pd.Index(image_ids, name="image_id"))
    if quality is not None and "image_id" in quality.columns:
        wanted = [c for c in ("width", "height", "jpeg_quality", "blurry_score", "batch_id", "pixel_hash")
                  if c in quality.columns]
        known = quality[["image_id", *wanted]]
        known = known[known.image_id.astype(str).isin(image_ids)].drop_duplicates("image_id", keep="last")
        info = known.set_index(known.image_id.astype(str))[wanted].reindex(info.index)

    if "pixel_hash" in info.columns:  # the same pixels as another member: an exact twin, with or without a pair
        pixel = pd.factorize(info.pixel_hash)[0]
        member = pixel >= 0
        key = root[member] * (int(pixel.max()) + 1) + pixel[member]
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        has_exact[np.flatnonzero(member)[counts[inverse] > 1]] = True
    nearest[has_exact] = 0

    def numeric(column: str) -> np.ndarray:
        if column not in info.columns:
            return np.full(n, np.nan)
        return pd.to_numeric(info[column], errors="coerce").to_numpy(dtype=float)

    if "batch_id" in info.columns:
        batch = info.batch_id.astype(object)
        batch_rank = pd.factorize(batch.where(batch.notna(), None), sort=True, use_na_sentinel=True)[0]
        batch_rank = np.where(batch_rank < 0, np.iinfo(np.int64).max, batch_rank)
    else:
        batch_rank = np.zeros(n, dtype=np.int64)

    # The member to keep (KEEP_RULE): resolution, compression, landing, sharpness, id.
    area = np.nan_to_num(numeric("width") * numeric("height"), nan=-1.0)
    compression = np.nan_to_num(numeric("jpeg_quality"), nan=LOSSLESS) if "jpeg_quality" in info.columns \
        else np.zeros(n)
    sharp = np.nan_to_num(numeric("blurry_score"), nan=-np.inf)
    order = np.lexsort((id_rank, -sharp, batch_rank, -compression, -area, root))
    first = order[np.r_[True, root[order][1:] != root[order][:-1]]]
    keep = np.zeros(n, dtype=bool)
    keep[first] = True

    # The founder names the group: earliest batch, then smallest id.
    order = np.lexsort((id_rank, batch_rank, root))
    founders = order[np.r_[True, root[order][1:] != root[order][:-1]]]
    names = {int(root[f]): _group_id(image_ids[f]) for f in founders}
    if previous is not None and len(previous):
        members = pd.DataFrame({"image_id": image_ids, "root": root})
        names.update(_inherited_names(members, previous, names))

    group_ids = np.array([names[r] for r in root.tolist()], dtype=object)
    out = pd.DataFrame({"image_id": image_ids, "group_id": group_ids,
                        "kind": np.where(has_exact, "exact", "near").astype(object), "keep": keep,
                        "nearest_distance": nearest.astype(np.int32)})
    group_rank = pd.factorize(out.group_id, sort=True)[0]
    return out.iloc[np.lexsort((id_rank, group_rank))].reset_index(drop=True)


@dataclass(frozen=True)
class EmbeddingDuplicateSettings:
    """When two images count as near duplicates by their embeddings (cosine distance ``e``, L2-normalised vectors),
    for the pairs perceptual hashes miss: flips, larger crops, heavier re-compression.

    ``e <= identical_radius``, or ``e <= near_radius and phash_distance + dhash_distance <= hash_total``

    The first rule trusts the embedding alone where it is all but certain: the built-in embedder is invariant to
    horizontal flips (a mirrored copy sits at distance 0, while its hashes differ in about 60 of 128 bits). The
    second needs both signals, each too weak alone: a crop moves both the embedding and the hashes a little, two
    different photos of one kind of scene are close in the embedding but not in the hashes. Measured on the CIFAR-10
    sample with the built-in embedder (``bench/embedding_duplicates.py``, docs/benchmarks.md): at the defaults every
    flip and nearly every crop of 6 % per side is found (hashes alone: none and about half), at a handful of pairs
    among the 4,000 distinct images, most of them real CIFAR-10 near duplicates. With another embedder (an ONNX
    model), measure again: its distances have another scale. ``identical_radius = 0`` and ``near_radius = 0`` turn
    embedding pairs off. ``max_neighbors`` caps the pairs one new image adds (closest first).

    **With the ratios set (the default), the radii are caps and what decides is local**, as for the hashes
    (:class:`DuplicateSettings`): a pair's local cosine scale is the smaller of its two images' cosine distances
    to their ``scale_neighbours``-th nearest image among the first ``scale_reference`` vectors, its local hash
    scale likewise on ``phash + dhash``. Near by the embedding alone: ``e <= min(near_radius, identical_ratio x
    cosine scale)``; by both: ``e <= min(near_radius, near_ratio x cosine scale)`` and ``phash + dhash <=
    min(hash_total, near_hash_ratio x hash scale)``. An ONNX embedder whose every image sits within 0.01 of its
    neighbours, or digits that sit within 0.12, then pair only what is much closer than its neighbours
    (``bench/fit_duplicate_radii.py``: fitted on digits, precision 0.98 or more on the held-out collections,
    including a random-convolution ONNX embedder where the absolute radii paired 36,000 distinct images).
    ``identical_ratio=None`` restores the absolute rule above.
    """

    identical_radius: float = 0.01
    near_radius: float = 0.2
    hash_total: int = 32
    max_neighbors: int | None = 100
    identical_ratio: float | None = 0.05
    near_ratio: float = 0.3
    near_hash_ratio: float = 0.5
    scale_neighbours: int = 10
    scale_reference: int = 2000

    def __post_init__(self):
        _check_scale(self.identical_ratio, self.scale_neighbours, self.scale_reference, "identical_ratio")
        for name in ("near_ratio", "near_hash_ratio"):
            if not 0.0 <= getattr(self, name) <= 10.0:
                raise ValueError(f"{name} must be in [0, 10], not {getattr(self, name)}")
        for name in ("identical_radius", "near_radius"):
            value = getattr(self, name)
            if not 0.0 <= value < 2.0:
                raise ValueError(f"{name} is a cosine distance in [0, 2), not {value}")
        if not 0 <= self.hash_total <= 128:
            raise ValueError(f"hash_total must be in 0..128, not {self.hash_total}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1 or None, not {self.max_neighbors}")

    @property
    def enabled(self) -> bool:
        return self.identical_radius > 0 or (self.near_radius > 0 and self.hash_total > 0)

    @property
    def search_radius(self) -> float:
        """The largest cosine distance either rule can accept."""
        if self.identical_ratio is not None:
            return self.near_radius
        return max(self.identical_radius, self.near_radius if self.hash_total > 0 else 0.0)

    def is_near(self, embedding_distance, hash_total_distance, cosine_scale=None, hash_scale=None):
        """The rule, on scalars or numpy arrays; the local scales are needed when the ratios are set."""
        if self.identical_ratio is None:
            return (embedding_distance <= self.identical_radius) | (
                (embedding_distance <= self.near_radius) & (hash_total_distance <= self.hash_total))
        # no local scale yet (a catalog of at most scale_neighbours images): the absolute rule
        cosine_known, hash_known = np.isfinite(cosine_scale), np.isfinite(hash_scale)
        alone_limit = np.where(cosine_known, self.identical_ratio * np.where(cosine_known, cosine_scale, 0.0),
                               self.identical_radius)
        near_limit = np.where(cosine_known, self.near_ratio * np.where(cosine_known, cosine_scale, 0.0),
                              self.near_radius)
        hash_limit = np.where(hash_known, np.minimum(self.hash_total,
                                                     self.near_hash_ratio * np.where(hash_known, hash_scale, 0.0)),
                              self.hash_total)
        alone = embedding_distance <= alone_limit
        both = (embedding_distance <= near_limit) & (hash_total_distance <= hash_limit)
        return (embedding_distance <= self.near_radius) & (alone | both)


# Query rows x catalog rows scored at once by find_embedding_pairs' neighbour search (float32): 16 MB, so a
# batch of 2,000 new images against a chunk of 2,000 is one block (larger blocks only cost memory).
EMBEDDING_BLOCK = 1 << 22


def find_embedding_pairs(new_ids: Sequence[str], new_vectors: np.ndarray, catalog_ids: Sequence[str],
                         catalog_vectors: np.ndarray, hashes: pd.DataFrame | HashCodes,
                         settings: EmbeddingDuplicateSettings | None = None) -> list[DuplicatePair]:
    """Near duplicate pairs by embedding distance that involve at least one of the new images.

    ``*_vectors`` are L2-normalised rows (one embedder version: distances between versions mean nothing);
    ``catalog`` may or may not hold the new rows. ``hashes`` has ``image_id, pixel_hash, phash, dhash`` for every
    image: pairs with identical pixels are left to the exact rule of :func:`find_pairs`, and ``distance`` is the
    pair's phash Hamming distance, as for hash pairs. Each unordered pair is reported once as ``a < b``, sorted;
    ``kind`` is ``near`` and ``found_by`` ``embedding``. The catalog may come in chunks: see
    :func:`find_embedding_pairs_in_chunks` (same pairs).
    """
    return find_embedding_pairs_in_chunks(new_ids, new_vectors, [(catalog_ids, catalog_vectors)], hashes, settings)


def find_embedding_pairs_in_chunks(new_ids: Sequence[str] | np.ndarray, new_vectors: np.ndarray,
                                   chunks: Iterable[tuple[Sequence[str] | np.ndarray, np.ndarray]],
                                   hashes: pd.DataFrame | HashCodes,
                                   settings: EmbeddingDuplicateSettings | None = None) -> list[DuplicatePair]:
    """:func:`find_embedding_pairs` against a catalog given as ``(ids, vectors)`` chunks (one batch file at a
    time), so memory holds the new vectors and one chunk, never the catalog's matrix. The neighbours of each chunk
    come from the shared engine's exact radius query (:class:`~cv_dataops.embeddings.neighbors.NeighborIndex`,
    float64 distances): the pairs, their distances and the ``max_neighbors`` cut (taken over all chunks) are those
    of one query against the whole catalog."""
    settings = settings or EmbeddingDuplicateSettings()
    new_vectors = np.asarray(new_vectors, dtype=np.float32)
    new_ids = as_ids(new_ids)
    if not settings.enabled or not len(new_ids):
        return []
    codes = hashes if isinstance(hashes, HashCodes) else HashCodes.from_frame(hashes, "hashes")
    known = codes.lookup
    radius = settings.search_radius
    local = settings.identical_ratio is not None
    new_at = known.positions(new_ids)
    queries = np.flatnonzero(new_at >= 0)  # an image without hash rows is no one's pair
    query_vectors = new_vectors[queries]
    found_q, found_r, found_e, found_v = [], [], [], []
    reference: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, vectors) of the first scale_reference vectors
    referenced = 0
    for chunk_ids, chunk_vectors in chunks:
        chunk_ids = as_ids(chunk_ids)
        chunk_vectors = np.asarray(chunk_vectors, dtype=np.float32)
        if not len(chunk_ids) or not len(queries):
            continue
        if query_vectors.shape[1] != chunk_vectors.shape[1]:
            raise ValueError(f"new vectors have {query_vectors.shape[1]} dimensions, the catalog's "
                             f"{chunk_vectors.shape[1]}")
        chunk_at = known.positions(chunk_ids)
        if local and referenced < settings.scale_reference:
            take = min(len(chunk_ids), settings.scale_reference - referenced)
            reference.append((chunk_at[:take], chunk_vectors[:take]))
            referenced += take
        q, r_local, e = NeighborIndex(chunk_vectors, block=EMBEDDING_BLOCK).query_radius(query_vectors, radius)
        q = new_at[queries[q]]
        r = chunk_at[r_local]
        keep = (r >= 0) & (q != r)
        found_q.append(q[keep])
        found_r.append(r[keep])
        found_e.append(e[keep])
        if local:  # the vectors of the other images, once each (not once per pair: 512 floats a copy)
            unique_local = np.unique(r_local[keep])
            found_v.append((chunk_at[unique_local], chunk_vectors[unique_local]))
    if not found_q or not sum(len(q) for q in found_q):
        return []
    q, r, e = np.concatenate(found_q), np.concatenate(found_r), np.concatenate(found_e)
    dp = popcount(codes.phash[q] ^ codes.phash[r]).astype(np.int64)
    dd = popcount(codes.dhash[q] ^ codes.dhash[r]).astype(np.int64)
    if local:
        other_rows = np.concatenate([rows for rows, _ in found_v])
        other_vectors = np.concatenate([vectors for _, vectors in found_v])
        cosine_scale, hash_scale = _pair_scales(q, r, query_vectors, new_at[queries], other_rows, other_vectors,
                                                reference, codes, settings)
        near = settings.is_near(e, dp + dd, cosine_scale, hash_scale)
    else:
        near = settings.is_near(e, dp + dd)
    near &= codes.pixel_hash[q] != codes.pixel_hash[r]
    ids = codes.image_id
    found = pd.DataFrame({"q": [as_text(i) for i in ids[q[near]]], "other": [as_text(i) for i in ids[r[near]]],
                          "e": e[near], "dp": dp[near]})
    found = found.sort_values(["q", "e", "other"], kind="stable")
    if settings.max_neighbors is not None:
        found = found[found.groupby("q").cumcount() < settings.max_neighbors]
    pairs: dict[tuple[str, str], DuplicatePair] = {}
    for image_id, other, distance, phash_distance in zip(found.q.tolist(), found.other.tolist(), found.e.tolist(),
                                                         found.dp.tolist()):
        a, b = (image_id, other) if image_id < other else (other, image_id)
        pairs.setdefault((a, b), DuplicatePair(a, b, "near", int(phash_distance), "embedding",
                                               round(max(0.0, float(distance)), 6)))
    return [pairs[key] for key in sorted(pairs)]


def cosine_scales(vectors: np.ndarray, rows: np.ndarray, reference_rows: np.ndarray, reference: np.ndarray,
                  k: int) -> np.ndarray:
    """The local cosine scale of ``vectors`` (hash rows ``rows``): the ``k``-th smallest cosine distance to the
    ``reference`` vectors (hash rows ``reference_rows``), the image itself left out; from the shared neighbour
    engine's k-nearest search (asked for one more, in case the image is among the reference)."""
    if len(reference) <= k or not len(vectors):
        return np.full(len(vectors), np.inf)
    distances, neighbours = NeighborIndex(reference).kneighbors(vectors, k + 1)
    distances = np.where(reference_rows[neighbours] == np.asarray(rows)[:, None], np.inf, distances)
    return np.sort(distances, axis=1)[:, k - 1]


def _pair_scales(q: np.ndarray, r: np.ndarray, query_vectors: np.ndarray, query_rows: np.ndarray,
                 other_rows: np.ndarray, other_vectors: np.ndarray, reference: list[tuple[np.ndarray, np.ndarray]],
                 codes: HashCodes, settings: EmbeddingDuplicateSettings) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate pair's local cosine and hash scales: the smaller of its two images' (see
    :class:`EmbeddingDuplicateSettings`). ``other_vectors[i]`` is the vector of hash row ``other_rows[i]``, each
    row of ``r`` once."""
    k = settings.scale_neighbours
    reference_rows = np.concatenate([rows for rows, _ in reference]) if reference else np.empty(0, np.int64)
    reference_vectors = (np.concatenate([v for _, v in reference]) if reference
                         else np.empty((0, query_vectors.shape[1]), np.float32))
    usable = reference_rows >= 0
    reference_rows, reference_vectors = reference_rows[usable], reference_vectors[usable]
    query_scale = dict(zip(query_rows.tolist(), cosine_scales(query_vectors, query_rows, reference_rows,
                                                              reference_vectors, k).tolist()))
    other_scale = dict(zip(other_rows.tolist(), cosine_scales(other_vectors, other_rows, reference_rows,
                                                              reference_vectors, k).tolist()))
    cosine = np.minimum([query_scale[i] for i in q.tolist()], [other_scale[i] for i in r.tolist()])
    involved, at = np.unique(np.concatenate([q, r]), return_inverse=True)
    hashed = hash_scales(codes.phash, codes.dhash, involved, settings.scale_reference, k)
    return cosine, np.minimum(hashed[at[:len(q)]], hashed[at[len(q):]])
