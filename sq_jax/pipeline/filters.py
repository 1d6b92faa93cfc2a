"""Pure, fast question filters: language, near-duplicates (MinHash LSH), benchmark decontamination (13-grams).

The paper's filtering stage (SCALEQUEST.md section 4) keeps non-empty all-ASCII questions; it removes no
duplicates and only *reports* 13-gram overlap with the test sets. sq-jax removes both: near-duplicates waste
response and reward compute, and contaminated questions make the evaluation meaningless.

All three filters share one text normalisation (`normalize`) so that case, spacing, punctuation and LaTeX
markup changes never hide a duplicate or a benchmark question.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

__all__ = [
    "Decontaminator",
    "NearDuplicateFilter",
    "decontaminate",
    "dedup",
    "language_problem",
    "normalize",
]

# Markup that changes how a formula looks but not what it says; removed before punctuation is stripped.
_LATEX_NOISE = re.compile(
    r"\\(?:left|right|[bB]ig{1,2}[lr]?|displaystyle|textstyle|text(?:bf|it|rm)?|math(?:rm|bf|it)|mbox"
    r"|q?quad)(?![a-zA-Z])|\\[,;:! ]"
)
_LATEX_FRAC = re.compile(r"\\[dt]frac(?![a-zA-Z])")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # "1,000" -> "1000"; "(0,3)" keeps its comma
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

    LSH candidates are verified with the signature estimate, and the earliest kept candidate that
    passes is reported, so results do not depend on hash-set order. Memory: one 4-byte-per-permutation
    signature per kept question (512 B with 128 permutations) plus the LSH tables.
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
        # datasketch's default bands (equal false-positive/negative weights) find only ~40% of the pairs at
        # exactly the threshold (b=9, r=13 for 0.8); every candidate is verified below, so favour recall:
        # b=16, r=8 finds ~95% at 0.8 and ~99% at 0.85, and the extra candidates cost one compare each.
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
        # Permutations are drawn once; every question's MinHash is a copy of this empty one (much cheaper).
        self._empty = MinHash(num_perm=num_perm, seed=seed)
        self._min_equal = threshold * num_perm - 1e-9  # equal signature slots needed to pass verification
        # LSH keys are ints (insertion order), so "earliest" is the smallest key.
        self._ids: list[str] = []
        self._signatures: list[np.ndarray] = []
        self._numbers: list[tuple[str, ...]] = []
        self._kept: set[str] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def _shingles(self, words: list[str]) -> list[bytes]:
        n = self.shingle
        if len(words) < n:
            return [" ".join(words).encode()]
        return [" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)]

    def check(self, id: str, text: str) -> str | None:
        """The id of the earlier kept near-duplicate of ``text`` (which is then not indexed), else None.

        A None answer indexes ``text`` under ``id``; checking an id that is already kept is an error.
        """
        if id in self._kept:
            raise ValueError(f"id {id!r} was already kept by this filter; ids must be unique")
        norm = normalize(text)
        minhash = self._empty.copy()
        minhash.update_batch(self._shingles(norm.split()))
        signature = minhash.hashvalues
        numbers = tuple(sorted(_DIGITS.findall(norm))) if self.numbers_must_match else ()
        for key in sorted(self._lsh.query(minhash)):
            if numbers != self._numbers[key]:
                continue
            if np.count_nonzero(signature == self._signatures[key]) >= self._min_equal:
                return self._ids[key]
        self._lsh.insert(len(self._ids), minhash, check_duplication=False)
        self._ids.append(id)
        self._signatures.append(signature)
        self._numbers.append(numbers)
        self._kept.add(id)
        return None


def dedup(
    records: Iterable[Mapping[str, Any]],
    text_field: str,
    *,
    id_field: str = "id",
    dedup_filter: NearDuplicateFilter | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``records`` into (kept, dropped) near-duplicates in input order; first occurrence wins.

    Dropped rows are copies with ``duplicate_of`` = the kept row's ``id_field``. Pass ``dedup_filter`` to
    set its parameters or to dedup several batches against each other (it keeps its index).
    """
    dedup_filter = dedup_filter if dedup_filter is not None else NearDuplicateFilter()
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        dup = dedup_filter.check(str(_field(rec, id_field, i)), _field(rec, text_field, i))
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
                for i in range(len(words) - n + 1):
                    self._grams.setdefault(" ".join(words[i : i + n]), name)
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
            grams = self._grams
            for i in range(len(words) - n + 1):
                hit = grams.get(" ".join(words[i : i + n]))
                if hit is not None:
                    return hit
            for length in self._short_lengths:
                for i in range(len(words) - length + 1):
                    hit = self._short.get(" ".join(words[i : i + length]))
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
    for i, rec in enumerate(records):
        name = decontaminator.match(_field(rec, text_field, i))
        if name is None:
            kept.append(dict(rec))
        else:
            dropped.append({**rec, "contaminated_with": name})
    return kept, dropped
