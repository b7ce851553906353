"""`--backend auto`: run each way of serving a model on this machine, keep those that agree with fp32 torch, and
serve the fastest.

Which backend and precision is fastest depends on the CPU (on one Xeon torch bf16 served at 0.78x of fp32; on
an AMX Xeon it runs at 2x; OpenVINO led on an EPYC), so nothing here is a fixed rule. Every option runs the
fixed calibration set (workers/calibration.py) in batches of one group, as served batches are:
- once, to compare with the fp32 torch reference. A reranker passes when the median per-group Spearman is at
  least 0.999 and at least 99% of groups have the same top passage; an embedder when every embedding's cosine
  with the reference is at least 0.999. An option asked for by name (`--precision int8`) is not gated, only
  reported;
- then, if it passed, `repeats` more times, timed (an option must be more than 5% faster than an earlier one to
  be preferred to it), keeping the fastest run (a neighbour only ever slows a run
  down; the first run is a warm-up, since kernels are chosen per shape on first use). One that failed the gate
  is not timed again: the table shows its warm-up speed, marked ~.
The decision is cached per model files, runtime versions, CPU model, thread count and option list, so a restart
does not measure again; delete the file (its path is logged) to measure afresh.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

MIN_SPEARMAN = 0.999
MIN_SAME_TOP = 0.99
MIN_COSINE = 0.999
NEAR = 1.05  # speeds this close are a tie (see choose)


@dataclass(frozen=True)
class Option:
    backend: str  # torch | openvino | onnxruntime
    precision: str  # fp32 | bf16 | int8

    def __str__(self) -> str:
        return f"{self.backend} {self.precision}"


REFERENCE = Option("torch", "fp32")


@dataclass
class Trial:
    """How one option did: items per second over the calibration set, and its agreement with the reference."""

    option: Option
    items_per_second: float = 0.0
    spearman: float = math.nan  # rerankers: median per-group Spearman
    same_top: float = math.nan  # rerankers: share of groups with the reference's top passage
    min_cosine: float = math.nan  # embedders: the worst embedding's cosine with the reference
    agrees: bool = False  # meets the gate's thresholds
    passed: bool = False  # may be served: agrees, or was asked for by name (not gated)
    gated: bool = True
    error: str = ""
    warm_up_only: bool = False  # its speed is from the warm-up run (it failed the gate, so was not timed again)

    def row(self) -> str:
        agree = (f"cosine >= {self.min_cosine:.5f}" if not math.isnan(self.min_cosine) else
                 f"spearman {self.spearman:.5f}, same top {self.same_top:.0%}" if not math.isnan(self.spearman)
                 else "")
        verdict = (f"failed: {self.error}" if self.error else "agrees" if self.agrees else
                   "disagrees with fp32" + ("" if self.gated else ", not gated (asked for)"))
        speed = f"{'~' if self.warm_up_only else ' '}{self.items_per_second:7.1f}/s" if self.items_per_second else " " * 10
        return f"{str(self.option):<18} {speed}  {agree:<34} {verdict}"


@dataclass
class Choice:
    option: Option
    trials: list[Trial] = field(default_factory=list)
    cached_at: str = ""  # the cache file it came from, or was saved to

    def table(self) -> str:
        rows = [t.row() + ("  <- chosen" if t.option == self.option else "") for t in self.trials]
        return "\n".join(["option             items/s     agreement with torch fp32          verdict", *rows])


def rerank_agreement(reference: np.ndarray, got: np.ndarray, group_sizes: Sequence[int]) -> tuple[float, float]:
    """(median per-group Spearman, share of groups whose top item is the reference's)."""
    from scipy.stats import spearmanr

    rhos, same = [], []
    start = 0
    for n in group_sizes:
        r, g = reference[start:start + n], got[start:start + n]
        start += n
        rho = spearmanr(r, g).statistic
        rhos.append(1.0 if math.isnan(rho) else float(rho))  # constant scores: no order to disagree on
        same.append(int(np.argmax(r)) == int(np.argmax(g)))
    return float(statistics.median(rhos)), float(np.mean(same))


def min_cosine(reference: np.ndarray, got: np.ndarray) -> float:
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = got / np.linalg.norm(got, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def _run_all(backend, batches: Sequence[Sequence]) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = [np.asarray(backend.run(b), dtype=np.float32) for b in batches]
    return np.concatenate(out), time.perf_counter() - t


def choose(kind: str, options: Sequence[Option], build: Callable[[Option], object], batches: Sequence[Sequence],
           *, gate: bool = True, repeats: int = 1, cache_file: Path | None = None) -> tuple[Choice, object | None]:
    """The fastest of `options` that passes the gate, and its backend (None when the choice came from the cache:
    build it then). `build(option)` makes a backend with `.run(batch)`; `batches` is the calibration set cut
    into served-size batches, one group each. An option whose build or run fails is reported and skipped."""
    if cache_file is not None and cache_file.exists():
        try:
            saved = json.loads(cache_file.read_text())
            choice = Choice(Option(**saved["option"]), [Trial(Option(**t.pop("option")), **t)
                                                        for t in saved["trials"]], str(cache_file))
            if choice.option in options:
                return choice, None
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable backend choice in %s", cache_file)
    sizes = [len(b) for b in batches]
    reference_backend = build(REFERENCE)
    reference, _ = _run_all(reference_backend, batches)
    trials, best, best_backend = [], None, None
    for option in options:
        trial = Trial(option, gated=gate)
        trials.append(trial)
        try:
            backend = reference_backend if option == REFERENCE else build(option)
            got, seconds = (reference, None) if option == REFERENCE else _run_all(backend, batches)
            if kind == "reranker":
                trial.spearman, trial.same_top = rerank_agreement(reference, got, sizes)
                trial.agrees = trial.spearman >= MIN_SPEARMAN and trial.same_top >= MIN_SAME_TOP
            else:
                trial.min_cosine = min_cosine(reference.reshape(len(got), -1), got.reshape(len(got), -1))
                trial.agrees = trial.min_cosine >= MIN_COSINE
            trial.passed = trial.agrees or not gate
            if trial.passed:  # the first run was the warm-up (kernels are picked per shape on first use)
                seconds = min(_run_all(backend, batches)[1] for _ in range(repeats))
                trial.items_per_second = sum(sizes) / seconds
            elif seconds:  # out of the running: its warm-up run gives a rough speed for the table
                trial.items_per_second = sum(sizes) / seconds
                trial.warm_up_only = True
        except Exception as exc:  # an option this model cannot run (causal LM on OpenVINO, missing package)
            trial.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            continue
        # An option must beat the best so far by more than NEAR to replace it: one timed run cannot tell 3% apart,
        # and a tie goes to the option listed first (torch, whose thread team Tandem resizes under contention).
        if trial.passed and (best is None or trial.items_per_second > best.items_per_second * NEAR):
            best, best_backend = trial, backend
        del backend
    del reference_backend
    if best is None:
        raise RuntimeError("no backend could serve this model:\n" + "\n".join(t.row() for t in trials))
    choice = Choice(best.option, trials)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"option": asdict(choice.option),
                                   "trials": [asdict(t) for t in trials]}, indent=1, default=str))
        tmp.rename(cache_file)
        choice.cached_at = str(cache_file)
    return choice, best_backend
