"""Grade many (prediction, gold) pairs in parallel with a hard per-sample time limit.

The parent process extracts each answer and runs the fast, sympy-free comparison
(`equivalence.quick_match`); only the pairs it cannot settle go to worker processes that run math-verify.
A worker that overruns its sample's budget is killed and replaced, and that sample is graded wrong with
``timed_out=True``: math-verify's own signal-based timeout cannot interrupt a big-integer power inside
sympy, and it does not work off the main thread at all, so killing a process is the only robust bound.

Workers are started with ``spawn``: forking a parent that has JAX (or any threads) loaded can deadlock.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import resource
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from tqdm import tqdm

from sq_jax.eval.equivalence import answers_match, quick_match
from sq_jax.eval.extract import extract_answer

__all__ = ["GradeRequest", "GradeResult", "GradingPool", "grade", "grade_many"]

_START_TIMEOUT_S = 120.0  # importing sympy on a loaded 2-core machine can take a while
_MAX_START_FAILURES = 3


@dataclass(frozen=True)
class GradeRequest:
    """One sample to grade. ``prediction`` is a whole solution, or the final answer if ``extracted``."""

    prediction: str
    gold: str | Sequence[str]
    multiple: bool = False
    unit: str | None = None
    extracted: bool = False


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    timed_out: bool = False
    extracted: str | None = None  # the answer that was compared (None: nothing could be extracted)
    error: str | None = None


def _worker_main(conn: Connection, memory_limit_mb: int | None) -> None:
    # Ctrl-C goes to the whole process group; the parent handles it and kills workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb:
        limit = memory_limit_mb * 1024 * 1024
        # An address-space cap turns a runaway bignum into a MemoryError instead of an OOM-killed machine.
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    answers_match("\\frac{\\pi}{2}", "\\pi/2")  # load sympy and the LaTeX parser before reporting ready
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        idx, pred, gold, multiple, unit, timeout_s = msg
        try:
            ok = answers_match(pred, gold, multiple=multiple, unit=unit, timeout_s=max(1.0, timeout_s / 2))
            conn.send(("result", idx, ok, None))
        except Exception as e:  # any failure is this sample's error; the worker keeps serving
            conn.send(("result", idx, False, f"{type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, ctx: Any, memory_limit_mb: int | None) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, memory_limit_mb), daemon=True)
        self.proc.start()
        child.close()  # so that recv() raises EOFError when the child dies
        self.started = time.monotonic()
        self.ready = False
        self.task: tuple[int, str] | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class GradingPool:
    """Worker processes that grade with a per-sample deadline; reusable across `grade_many` calls."""

    def __init__(self, workers: int | None = None, *, memory_limit_mb: int | None = 4096) -> None:
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.memory_limit_mb = memory_limit_mb
        self._ctx = mp.get_context("spawn")
        self._pool: list[_Worker] = []
        self.restarts = 0  # workers replaced after a timeout or a crash (for reports and tests)

    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for w in self._pool:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass  # already dead or closed: kill() below reaps it
        for w in self._pool:
            w.proc.join(2)
            w.kill()
        self._pool = []

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.restarts += 1
        self._pool[self._pool.index(w)] = _Worker(self._ctx, self.memory_limit_mb)

    def grade_many(
        self, requests: Sequence[GradeRequest], *, timeout_s: float = 5.0, progress: bool = False
    ) -> list[GradeResult]:
        """Grade ``requests``; results come back in the same order."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        results: list[GradeResult | None] = [None] * len(requests)
        todo: deque[tuple[int, str]] = deque()
        for i, req in enumerate(requests):
            answer = req.prediction if req.extracted else extract_answer(req.prediction)
            if answer is None:
                results[i] = GradeResult(False, extracted=None)
                continue
            try:
                decided = quick_match(answer, req.gold, multiple=req.multiple, unit=req.unit)
            except ValueError as e:  # a malformed gold is that sample's error, not the batch's
                results[i] = GradeResult(False, extracted=answer, error=str(e))
                continue
            if decided is None:
                todo.append((i, answer))
            else:
                results[i] = GradeResult(decided, extracted=answer)
        if todo:
            self._run(requests, todo, results, timeout_s, progress)
        return [r if r is not None else GradeResult(False, error="not graded") for r in results]

    def _run(
        self,
        requests: Sequence[GradeRequest],
        todo: deque[tuple[int, str]],
        results: list[GradeResult | None],
        timeout_s: float,
        progress: bool,
    ) -> None:
        bar = None
        if progress:
            bar = tqdm(total=len(todo), desc="grading (symbolic)", unit="pair")
        while len(self._pool) < self.workers:
            self._pool.append(_Worker(self._ctx, self.memory_limit_mb))
        start_failures = 0
        try:
            while todo or any(w.task is not None for w in self._pool):
                now = time.monotonic()
                for w in self._pool:
                    if w.ready and w.task is None and todo:
                        i, answer = todo.popleft()
                        req = requests[i]
                        gold = req.gold if isinstance(req.gold, str) else list(req.gold)
                        w.conn.send((i, answer, gold, req.multiple, req.unit, timeout_s))
                        w.task, w.deadline = (i, answer), now + timeout_s
                deadlines = [w.deadline for w in self._pool if w.task is not None]
                deadlines += [w.started + _START_TIMEOUT_S for w in self._pool if not w.ready]
                wait_s = max(0.0, min(deadlines) - now) if deadlines else 1.0
                by_conn = {w.conn: w for w in self._pool}
                for conn in wait(list(by_conn), timeout=wait_s):
                    w = by_conn[conn]
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        w.proc.join(1)
                        code = w.proc.exitcode
                        if w.task is not None:
                            i, answer = w.task
                            results[i] = GradeResult(
                                False, extracted=answer, error=f"grading worker died (exit code {code})"
                            )
                            if bar is not None:
                                bar.update(1)
                        elif not w.ready:
                            start_failures += 1
                            if start_failures > _MAX_START_FAILURES:
                                raise RuntimeError(
                                    f"grading workers keep dying at start (exit code {code}); spawned workers "
                                    "re-import __main__, so run from a file, not `python -` / stdin"
                                )
                        self._replace(w)
                        continue
                    if msg[0] == "ready":
                        w.ready = True
                    else:
                        _, i, ok, err = msg
                        results[i] = GradeResult(bool(ok), extracted=w.task[1] if w.task else None, error=err)
                        w.task = None
                        if bar is not None:
                            bar.update(1)
                now = time.monotonic()
                for w in list(self._pool):
                    if w.task is not None and now >= w.deadline:
                        i, answer = w.task
                        results[i] = GradeResult(
                            False, timed_out=True, extracted=answer, error=f"timed out after {timeout_s:g}s"
                        )
                        if bar is not None:
                            bar.update(1)
                        self._replace(w)
                    elif not w.ready and now >= w.started + _START_TIMEOUT_S:
                        raise RuntimeError(f"a grading worker did not start within {_START_TIMEOUT_S:g}s")
        except BaseException:
            # Interrupted or failed mid-batch: workers may hold half-done tasks, so start fresh next time.
            self.close()
            raise
        finally:
            if bar is not None:
                bar.close()


_SHARED: dict[int, GradingPool] = {}


def _shared_pool(workers: int | None) -> GradingPool:
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n not in _SHARED:
        if not _SHARED:
            atexit.register(_close_shared)
        _SHARED[n] = GradingPool(n)
    return _SHARED[n]


def _close_shared() -> None:
    for pool in _SHARED.values():
        pool.close()
    _SHARED.clear()


def grade_many(
    pairs: Sequence[GradeRequest],
    *,
    workers: int | None = None,
    timeout_s: float = 5.0,
    pool: GradingPool | None = None,
    progress: bool = False,
) -> list[GradeResult]:
    """Grade ``pairs`` across ``workers`` processes (default: one per CPU), preserving order.

    Without ``pool`` a process-wide pool per worker count is reused, so repeated calls do not pay the
    worker start-up (importing sympy) again.
    """
    return (pool or _shared_pool(workers)).grade_many(pairs, timeout_s=timeout_s, progress=progress)


def grade(
    prediction: str,
    gold: str | Sequence[str],
    *,
    multiple: bool = False,
    unit: str | None = None,
    extracted: bool = False,
    timeout_s: float = 5.0,
) -> GradeResult:
    """Grade one prediction (a whole solution unless ``extracted``) with the same guarantees."""
    return grade_many([GradeRequest(prediction, gold, multiple, unit, extracted)], workers=1, timeout_s=timeout_s)[0]
