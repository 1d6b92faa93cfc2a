"""MinHash signatures and LSH bands in numpy, over a batch of texts at a time, and a sorted multi-map for the bands.

The hash values are datasketch's (2.x, its default "affine32" scheme) bit for bit: the first 4 bytes of each
shingle's SHA-1 as a little-endian uint32, the MurmurHash3 32-bit finaliser, then ``a * h + b`` in uint32 with the
odd ``a`` and the ``b`` drawn from ``np.random.RandomState(seed)``; the signature is the minimum over shingles. The
bands (b, r) are datasketch's `MinHashLSH` choice. We hash in numpy rather than through datasketch because its
`MinHash` is one Python object per text (~6.5 KiB each inside an LSH) and its updates run one text at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from hashlib import sha1

import numpy as np

__all__ = ["SortedMultiMap", "band_keys", "lsh_bands", "permutations", "shingle_digests", "signatures"]

_MASK32 = np.uint32(0xFFFFFFFF)
_FMIX32 = (np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35))
# Cells of one (permutations x shingles) uint32 block: 16 MiB, small enough to stay near the caches.
_BLOCK_CELLS = 1 << 22


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The affine permutations (a odd, b), uint32, drawn as datasketch draws them."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * _FMIX32[0]
    h = h ^ (h >> np.uint32(13))
    h = h * _FMIX32[1]
    return h ^ (h >> np.uint32(16))


def shingle_digests(words: Sequence[bytes], n: int) -> bytes:
    """SHA-1 digests (20 bytes each) of the word n-grams of ``words``; fewer than n words are one shingle."""
    if len(words) < n:
        return sha1(b" ".join(words)).digest()
    grams = map(b" ".join, zip(*(words[i:] for i in range(n)))) if n > 1 else words
    return b"".join([sha1(g).digest() for g in grams])


def signatures(texts: Sequence[str], n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(texts, permutations) uint32 MinHash signatures of the word n-gram sets of ``texts``: words split on ASCII
    whitespace, each shingle its words' UTF-8 bytes joined by one space (as datasketch is fed them). For
    `normalize`d text (words and single spaces) that is `str.split`."""
    chunks = [shingle_digests(text.encode().split(), n) for text in texts]
    counts = np.fromiter((len(c) // 20 for c in chunks), dtype=np.int64, count=len(chunks))
    digests = np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(-1, 20)
    hashes = _fmix32(np.ascontiguousarray(digests[:, :4]).view("<u4").ravel().astype(np.uint32))
    starts = np.concatenate([[0], np.cumsum(counts)])
    out = np.empty((len(chunks), len(a)), dtype=np.uint32)
    shingles_per_block = max(1, _BLOCK_CELLS // len(a))
    row = 0
    while row < len(chunks):
        # As many texts as fit in one block (at least one, however long).
        end = int(np.searchsorted(starts, starts[row] + shingles_per_block, side="right")) - 1
        end = min(max(row + 1, end), len(chunks))
        # (permutations, shingles): the minimum runs along contiguous memory. uint32 wraps: the modulo 2^32.
        block = a[:, None] * hashes[None, starts[row] : starts[end]]
        block += b[:, None]
        out[row:end] = np.minimum.reduceat(block, starts[row:end] - starts[row], axis=1).T
        row = end
    return out


@functools.lru_cache(maxsize=None)
def lsh_bands(threshold: float, num_perm: int, weights: tuple[float, float] = (0.05, 0.95)) -> tuple[int, int]:
    """datasketch's `MinHashLSH` (bands, rows): the least weighted sum of the false positive / negative areas
    (the same integrands, written as datasketch writes them, so that near-ties fall the same way)."""
    from scipy.integrate import quad  # scipy is slow to import; only an uncached (threshold, num_perm) needs it

    best, choice = float("inf"), (0, 0)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = quad(lambda s: 1 - (1 - s ** float(rows)) ** float(bands), 0.0, threshold)[0]
            fn = quad(lambda s: 1 - (1 - (1 - s ** float(rows)) ** float(bands)), threshold, 1.0)[0]
            error = fp * weights[0] + fn * weights[1]
            if error < best:
                best, choice = error, (bands, rows)
    return choice


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(texts, bands) uint64 hashes of each band's ``rows`` signature values (FNV-style mix, then a finaliser).

    Equal bands give equal keys; a rare collision only adds a candidate, which the caller checks exactly."""
    x = sigs[:, : bands * rows].reshape(len(sigs), bands, rows).astype(np.uint64)
    h = np.full((len(sigs), bands), 0xCBF29CE484222325, dtype=np.uint64)
    for i in range(rows):
        h ^= x[:, :, i]
        h *= np.uint64(0x100000001B3)
        h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(32))


class SortedMultiMap:
    """uint64 keys -> int64 values (several per key) in two sorted numpy arrays: 16 bytes an entry, no Python
    objects. Inserting a batch merges it in (one linear pass); looking a batch up is two binary searches."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)
        self.values = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        at = np.searchsorted(self.keys, keys, side="right")  # after equal keys: values stay in insertion order
        self.keys = np.insert(self.keys, at, keys)
        self.values = np.insert(self.values, at, values)

    def lookup(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query index, value) for every stored entry whose key equals a query."""
        lo = np.searchsorted(self.keys, queries, side="left")
        hi = np.searchsorted(self.keys, queries, side="right")
        counts = hi - lo
        hit = np.repeat(np.arange(len(queries)), counts)
        offsets = np.cumsum(counts) - counts
        positions = np.arange(int(counts.sum())) - np.repeat(offsets - lo, counts)
        return hit, self.values[positions]
