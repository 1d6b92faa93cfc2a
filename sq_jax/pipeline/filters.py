"""Pure, fast question filters: language, near-duplicates (MinHash LSH), benchmark decontamination (13-grams).

The paper's filtering stage (SCALEQUEST.md section 4) keeps non-empty all-ASCII questions; it removes no
duplicates and only *reports* 13-gram overlap with the test sets. sq-jax removes both: near-duplicates waste
response and reward compute, and contaminated questions make the evaluation meaningless.

All three filters share one text normalisation (`normalize`) so that case, spacing, punctuation and LaTeX
markup changes never hide a duplicate or a benchmark question.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from sq_jax.pipeline.minhash import SortedMultiMap, band_keys, lsh_bands, permutations, signatures

__all__ = [
    "Decontaminator",
    "NearDuplicateFilter",
    "decontaminate",
    "decontaminate_stream",
    "dedup",
    "dedup_stream",
    "language_problem",
    "normalize",
]

# Markup that changes how a formula looks but not what it says; removed before punctuation is stripped.
_LATEX_NOISE = re.compile(
    r"\\(?:left|right|[bB]ig{1,2}[lr]?|displaystyle|textstyle|text(?:bf|it|rm)?|math(?:rm|bf|it)|mbox"
    r"|q?quad)(?![a-zA-Z])|\\[,;:! ]"
)
_LATEX_FRAC = re.compile(r"\\[dt]frac(?![a-zA-Z])")
# "1,000" -> "1000"; "(0,3)" keeps its comma. The comma comes first so that re scans for it (a leading
# lookbehind is tried at every position: 7x slower on long questions).
_THOUSANDS = re.compile(r",(?<=\d,)(?=\d{3}(?!\d))")
# Punctuation becomes a space (not nothing) so that "x^2+3x" and "x^2 + 3x" normalise alike.
_NON_WORD = re.compile(r"[\W_]+")
_DIGITS = re.compile(r"\d+")


def normalize(text: str) -> str:
    """Lowercase, NFKC, LaTeX markup and punctuation removed, whitespace collapsed: words joined by one space.

    ``"What is $\\left(\\dfrac{1}{2}\\right)^2$?"`` -> ``"what is frac 1 2 2"``.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _LATEX_FRAC.sub(r"\\frac", _LATEX_NOISE.sub(" ", text))
    text = _THOUSANDS.sub("", text)
    return _NON_WORD.sub(" ", text).strip()


# ---------------------------------------------------------------------------------------------- language


def language_problem(question: str, *, min_words: int = 3) -> str | None:
    """The paper's language filter: None when ``question`` is fine, else why not.

    Reasons, checked in this order: ``"empty"`` (blank after strip), ``"non_ascii"`` (any character above
    U+007F: the paper drops those to keep English-only questions; LaTeX is ASCII so it survives),
    ``"too_short"`` (fewer than ``min_words`` whitespace-separated words: "Solve." is no question).
    """
    text = question.strip()
    if not text:
        return "empty"
    if not text.isascii():
        return "non_ascii"
    if len(text.split()) < min_words:
        return "too_short"
    return None


# ---------------------------------------------------------------------------------------- near-duplicates


def _field(rec: Mapping[str, Any], field: str, index: int) -> Any:
    if field not in rec:
        raise ValueError(f"record {index} has no field {field!r} (fields: {', '.join(map(str, rec))})")
    return rec[field]


class _Rows:
    """A growing 2-D (or 1-D) numpy array: appends amortised by growing the capacity by half."""

    def __init__(self, width: int | None, dtype: Any) -> None:
        shape = (1024,) if width is None else (1024, width)
        self._data = np.empty(shape, dtype=dtype)
        self.size = 0

    @property
    def array(self) -> np.ndarray:
        return self._data[: self.size]

    @property
    def nbytes(self) -> int:
        return self._data.nbytes

    def append(self, rows: np.ndarray) -> None:
        need = self.size + len(rows)
        if need > len(self._data):
            grown = np.empty((max(need, len(self._data) * 3 // 2),) + self._data.shape[1:], dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : need] = rows
        self.size = need


def _hash64(items: Iterable[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(hashlib.blake2b(x, digest_size=8).digest() for x in items), dtype="<u8")


class NearDuplicateFilter:
    """Streaming near-duplicate detector: MinHash over word shingles, LSH for candidates, first one wins.

    Two questions are near-duplicates when (a) the MinHash estimate of the Jaccard similarity of their
    word ``shingle``-gram sets (after `normalize`) is at least ``threshold`` and (b), when
    ``numbers_must_match``, they contain the same multiset of numbers. Rule (b) exists because math
    questions that differ only in a number are different problems with different answers: generated
    questions from one template ("Mia buys 8 oranges at $11 each...") are often 0.8-similar in 3-grams
    and must all survive. A one-word (non-number) edit of a w-word question leaves a 3-gram Jaccard of
    ``(w - 5) / (w + 1)``: with the defaults it is caught nearly always from ~40 words (>= 0.85), about
    half the time near 30 words (0.8, the threshold) and never under ~25 words; shorter questions need a
    lower threshold or smaller shingles. Case, spacing, punctuation and LaTeX markup changes are always
    caught (they normalise away). Texts with fewer than ``shingle`` words are one shingle (the whole
    text), so they only match exact (normalised) copies.

    Candidates are the kept questions that share an LSH band exactly (datasketch's bands for the threshold
    with weights (0.05, 0.95): b=16, r=8 for 0.8, which finds ~95% of the pairs at exactly 0.8 and ~99% at
    0.85; every candidate is verified, so recall is what the bands buy). A candidate passes when its
    signature agrees in at least ``threshold * num_perm`` slots; the earliest kept one that passes is
    reported, and a dropped question is not indexed. The verdicts are those of datasketch's MinHash and
    MinHashLSH used one question at a time (the test keeps that implementation as the reference).

    `check_batch` decides a batch at once (vectorised hashing and lookups), as if its questions came one by
    one. Memory, all in numpy arrays: per kept question its uint32 signature (512 B at 128 permutations),
    a uint64 key and an int64 id per band (256 B at 16 bands), 8-byte hashes of its numbers and its id (a
    numbers-hash collision would need a 2^-64 chance and an 0.8-similar signature), its id's UTF-8 bytes and
    an offset: ~800 B, plus up to half the signature store again while that grows (`nbytes`).
    """

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        shingle: int = 3,
        seed: int = 1,
        *,
        numbers_must_match: bool = True,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if shingle < 1:
            raise ValueError(f"shingle must be >= 1, got {shingle}")
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.numbers_must_match = numbers_must_match
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        self._a, self._b = permutations(num_perm, seed)
        self._min_equal = threshold * num_perm - 1e-9  # equal signature slots needed to pass verification
        self._signatures = _Rows(num_perm, np.uint32)
        self._numbers = _Rows(None, np.uint64)
        self._tables = [SortedMultiMap() for _ in range(self.bands)]  # band key -> kept index
        self._id_table = SortedMultiMap()  # id hash -> kept index (ids must be unique among the kept)
        self._id_bytes = bytearray()
        self._id_ends = _Rows(None, np.int64)

    def __len__(self) -> int:
        return self._signatures.size

    @property
    def nbytes(self) -> int:
        """Bytes the index holds (array capacities included)."""
        return (self._signatures.nbytes + self._numbers.nbytes + self._id_ends.nbytes + len(self._id_bytes)
                + self._id_table.nbytes + sum(t.nbytes for t in self._tables))

    def _id(self, index: int) -> str:
        ends = self._id_ends.array
        return self._id_bytes[(int(ends[index - 1]) if index else 0) : int(ends[index])].decode()

    def check(self, id: str, text: str) -> str | None:
        """The id of the earlier kept near-duplicate of ``text`` (which is then not indexed), else None.

        A None answer indexes ``text`` under ``id``; checking an id that is already kept is an error.
        """
        return self.check_batch([id], [text])[0]

    def check_batch(self, ids: Sequence[str], texts: Sequence[str]) -> list[str | None]:
        """`check` for each (id, text) in order, vectorised; on an error nothing of the batch is indexed."""
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        if not ids:
            return []
        norms = [normalize(t) for t in texts]
        sigs = signatures(norms, self.shingle, self._a, self._b)
        numbers = (_hash64("\0".join(sorted(_DIGITS.findall(n))).encode() for n in norms)
                   if self.numbers_must_match else np.zeros(len(ids), dtype=np.uint64))
        keys = band_keys(sigs, self.bands, self.rows)
        earlier = self._match_index(sigs, numbers, keys)  # kept index, or -1
        in_batch = self._match_batch(sigs, numbers, keys, earlier)  # batch row, or -1
        kept = (earlier < 0) & (in_batch < 0)
        encoded = [i.encode() for i in ids]
        id_hashes = _hash64(encoded)
        self._check_ids(ids, id_hashes, kept)
        self._add(sigs[kept], numbers[kept], keys[kept], [e for e, k in zip(encoded, kept) if k], id_hashes[kept])
        return [self._id(int(e)) if e >= 0 else (ids[int(b)] if b >= 0 else None) for e, b in zip(earlier, in_batch)]

    def _passes(self, sigs: np.ndarray, rows: np.ndarray, others: np.ndarray, cands: np.ndarray) -> np.ndarray:
        """Per pair (sigs[rows[i]], others[cands[i]]): shares a band exactly (an LSH candidate, whatever the band
        keys' hashes say) and agrees in enough slots."""
        out = np.empty(len(rows), dtype=bool)
        step = 32_768  # pairs per block: bounds the gathered signatures at 16 MiB each
        for s in range(0, len(rows), step):
            equal = sigs[rows[s : s + step]] == others[cands[s : s + step]]
            bands = equal[:, : self.bands * self.rows].reshape(len(equal), self.bands, self.rows)
            out[s : s + step] = bands.all(axis=2).any(axis=1) & (np.count_nonzero(equal, axis=1) >= self._min_equal)
        return out

    def _match_index(self, sigs: np.ndarray, numbers: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Per row: the earliest kept question it duplicates, else -1."""
        earlier = np.full(len(sigs), -1, dtype=np.int64)
        size = len(self)
        if not size:
            return earlier
        hits = [table.lookup(keys[:, k]) for k, table in enumerate(self._tables)]
        pairs = np.unique(np.concatenate([rows * size + cands for rows, cands in hits]))  # by row, then kept index
        rows, cands = np.divmod(pairs, size)
        same = self._numbers.array[cands] == numbers[rows]
        rows, cands = rows[same], cands[same]
        passed = self._passes(sigs, rows, self._signatures.array, cands)
        rows, cands = rows[passed], cands[passed]
        matched, first = np.unique(rows, return_index=True)
        earlier[matched] = cands[first]
        return earlier

    def _match_batch(self, sigs: np.ndarray, numbers: np.ndarray, keys: np.ndarray, earlier: np.ndarray) -> np.ndarray:
        """Per row the index matched nothing for: the earliest earlier row of the batch, kept, that it duplicates."""
        in_batch = np.full(len(sigs), -1, dtype=np.int64)
        groups = np.empty(keys.shape, dtype=np.int64)  # (row, band) -> a band-key group, numbered over all bands
        shared = np.empty(keys.shape, dtype=bool)  # the group holds another row of this batch
        offset = 0
        for k in range(self.bands):
            _, inverse, counts = np.unique(keys[:, k], return_inverse=True, return_counts=True)
            groups[:, k] = inverse + offset
            shared[:, k] = counts[inverse] > 1
            offset += len(counts)
        # Kept rows per shared group, in order: one batch's worth at most, and only rows sharing a band key.
        members: dict[int, list[int]] = {}
        for j in np.flatnonzero(shared.any(axis=1) & (earlier < 0)).tolist():
            mine = groups[j][shared[j]].tolist()
            cands = np.array(sorted({i for g in mine for i in members.get(g, ())}), dtype=np.int64)
            cands = cands[numbers[cands] == numbers[j]]
            if len(cands):
                passed = self._passes(sigs, np.full(len(cands), j), sigs, cands)
                if passed.any():
                    in_batch[j] = cands[np.argmax(passed)]
                    continue
            for g in mine:
                members.setdefault(g, []).append(j)
        return in_batch

    def _check_ids(self, ids: Sequence[str], id_hashes: np.ndarray, kept: np.ndarray) -> None:
        """An id already kept (before this batch, or earlier in it) is an error, as in one-by-one checks."""
        for j, index in zip(*(x.tolist() for x in self._id_table.lookup(id_hashes))):
            if self._id(index) == ids[j]:
                raise ValueError(f"id {ids[j]!r} was already kept by this filter; ids must be unique")
        if len(set(ids)) < len(ids):
            kept_here: set[str] = set()
            for id, keep in zip(ids, kept.tolist()):
                if id in kept_here:
                    raise ValueError(f"id {id!r} was already kept by this filter; ids must be unique")
                if keep:
                    kept_here.add(id)

    def _add(self, sigs: np.ndarray, numbers: np.ndarray, keys: np.ndarray, ids: list[bytes],
             id_hashes: np.ndarray) -> None:
        index = np.arange(len(self), len(self) + len(sigs), dtype=np.int64)
        self._signatures.append(sigs)
        self._numbers.append(numbers)
        for k, table in enumerate(self._tables):
            table.insert(keys[:, k], index)
        self._id_table.insert(id_hashes, index)
        self._id_ends.append(len(self._id_bytes) + np.cumsum([len(i) for i in ids], dtype=np.int64))
        self._id_bytes += b"".join(ids)


def dedup_stream(
    records: Iterable[Mapping[str, Any]],
    text_field: str,
    *,
    id_field: str = "id",
    dedup_filter: NearDuplicateFilter | None = None,
    batch_size: int = 10_000,
) -> Iterator[tuple[Mapping[str, Any], str | None]]:
    """(record, id of the kept record it duplicates or None) for each record in order, ``batch_size`` at a time."""
    dedup_filter = dedup_filter if dedup_filter is not None else NearDuplicateFilter()
    numbered = enumerate(records)
    while batch := list(itertools.islice(numbered, batch_size)):
        ids = [str(_field(rec, id_field, i)) for i, rec in batch]
        texts = [_field(rec, text_field, i) for i, rec in batch]
        for (_, rec), dup in zip(batch, dedup_filter.check_batch(ids, texts)):
            yield rec, dup


def dedup(
    records: Iterable[Mapping[str, Any]],
    text_field: str,
    *,
    id_field: str = "id",
    dedup_filter: NearDuplicateFilter | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``records`` into (kept, dropped) near-duplicates in input order; first occurrence wins.

    Dropped rows are copies with ``duplicate_of`` = the kept row's ``id_field``. Pass ``dedup_filter`` to
    set its parameters or to dedup several batches against each other (it keeps its index). `dedup_stream`
    gives the same verdicts without holding the records.
    """
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for rec, dup in dedup_stream(records, text_field, id_field=id_field, dedup_filter=dedup_filter):
        if dup is None:
            kept.append(dict(rec))
        else:
            dropped.append({**rec, "duplicate_of": dup})
    return kept, dropped


# ------------------------------------------------------------------------------------- decontamination


class Decontaminator:
    """Find questions that overlap a benchmark's test questions, after `normalize`.

    Rules, for a question of w normalised words against test questions of t words:
    - w >= n: contaminated when it shares any word ``n``-gram with a test question (the paper's 13-gram
      measure), or when it contains a whole short test question (``min_words`` <= t < n), whose
      contamination no n-gram can show ("Simplify: $\\frac{k^2-12k+32}{k^2-64}$" plus a preamble).
    - ``min_words`` <= w < n: contaminated when it is contained in (or equals) a test question.
    - any w: contaminated when it equals a test question exactly; a verbatim copy is contamination however
      short. Containment of texts under ``min_words`` words is not counted: "find the value of x" is in
      many test questions and is no leak.
    Containment is on whole words. The first benchmark (in ``texts`` order) that matches is reported.
    """

    def __init__(self, texts: Mapping[str, Iterable[str]], n: int = 13, *, min_words: int = 8) -> None:
        if n < 1 or min_words < 1:
            raise ValueError(f"n and min_words must be >= 1, got n={n}, min_words={min_words}")
        self.n, self.min_words = n, min_words
        # Joined word strings are the set keys: exact (no collisions) and free of per-process hash salting
        # issues because the set never leaves the process; Python's cached str hash makes lookups fast.
        self._grams: dict[str, str] = {}
        self._short: dict[str, str] = {}  # whole test questions with min_words <= t < n
        self._exact: dict[str, str] = {}
        self._short_lengths: list[int] = []
        # The first `_lead` words of every indexed n-gram and short question: a question's positions whose
        # `_lead`-gram is not among them cannot start a hit, so only the few that are get the longer joins.
        self._lead = min(self.min_words, n)
        self._leads: set[str] = set()
        # All test texts in one string, " text " per line, to find a short question inside any of them
        # with one C-speed substring search; offsets map a hit back to its benchmark.
        parts: list[str] = []
        self._starts: list[int] = []
        self._names: list[str] = []
        offset = 0
        for name, questions in texts.items():
            self._starts.append(offset)
            self._names.append(name)
            for question in questions:
                norm = normalize(question)
                words = norm.split()
                if norm:
                    self._exact.setdefault(norm, name)
                if self.min_words <= len(words) < n:
                    self._short.setdefault(norm, name)
                    self._leads.add(" ".join(words[: self._lead]))
                for i in range(len(words) - n + 1):
                    self._grams.setdefault(" ".join(words[i : i + n]), name)
                    self._leads.add(" ".join(words[i : i + self._lead]))
                parts.append(f" {norm} \n")
                offset += len(parts[-1])
        self._haystack = "".join(parts)
        self._short_lengths = sorted({len(s.split()) for s in self._short})

    @classmethod
    def from_benchmarks(
        cls,
        names: Sequence[str] = ("gsm8k", "math500", "college_math", "olympiadbench"),
        data_dir: str | None = None,
        n: int = 13,
        paths: dict[str, str] | None = None,
        prefix: str = "",
    ) -> Decontaminator:
        """Index the test questions of ``names`` (``paths[name]``, else ``{data_dir}/{name}/test.jsonl``, else the
        hub); a benchmark with no hub copy and no local file is an error naming ``prefix`` + the key."""
        from sq_jax.eval.benchmarks import benchmark_path, load_benchmark  # eval imports grading deps

        texts = {}
        for name in names:
            path = benchmark_path(name, data_dir=data_dir, paths=paths, prefix=prefix)
            texts[name] = [item.question for item in load_benchmark(name, path=path)]
        return cls(texts, n=n)

    def __len__(self) -> int:
        """Number of distinct indexed n-grams."""
        return len(self._grams)

    def match(self, question: str) -> str | None:
        """The name of the benchmark ``question`` overlaps (see the class rules), or None when clean."""
        norm = normalize(question)
        hit = self._exact.get(norm)
        if hit is not None:
            return hit
        words = norm.split()
        n = self.n
        if len(words) >= n:
            leads = self._leads
            lead_grams = list(map(" ".join, zip(*(words[j:] for j in range(self._lead)))))
            if leads.isdisjoint(lead_grams):  # most questions: one C-level pass
                return None
            starts = [i for i, gram in enumerate(lead_grams) if gram in leads]
            for i in starts:  # n-grams first, by position
                hit = self._grams.get(" ".join(words[i : i + n])) if i + n <= len(words) else None
                if hit is not None:
                    return hit
            for length in self._short_lengths:  # then whole short test questions, shortest first
                for i in starts:
                    hit = self._short.get(" ".join(words[i : i + length])) if i + length <= len(words) else None
                    if hit is not None:
                        return hit
            return None
        if len(words) >= self.min_words:
            pos = self._haystack.find(f" {norm} ")
            if pos >= 0:
                return self._names[bisect_right(self._starts, pos) - 1]
        return None


def decontaminate(
    records: Iterable[Mapping[str, Any]], text_field: str, decontaminator: Decontaminator
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``records`` into (kept, dropped) in input order; dropped copies carry ``contaminated_with``."""
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for rec, name in decontaminate_stream(records, text_field, decontaminator):
        if name is None:
            kept.append(dict(rec))
        else:
            dropped.append({**rec, "contaminated_with": name})
    return kept, dropped


def decontaminate_stream(
    records: Iterable[Mapping[str, Any]], text_field: str, decontaminator: Decontaminator
) -> Iterator[tuple[Mapping[str, Any], str | None]]:
    """(record, the benchmark it overlaps or None) for each record in order."""
    for i, rec in enumerate(records):
        yield rec, decontaminator.match(_field(rec, text_field, i))
