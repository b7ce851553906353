"""`--backend auto`: time each way of serving a model on this machine, and serve the fastest whose ranking loses
nothing a user would notice against fp32 torch.

Which backend and precision is fastest depends on the CPU (on one Xeon torch bf16 served at 0.78x of fp32; on
an AMX Xeon it runs at 2x; OpenVINO led on an EPYC), so nothing here is a fixed rule. In two steps:
1. Speed. Every option runs the timing groups (workers/calibration.py) cut into batches as the server cuts
   them: a warm-up (kernels are chosen per shape on first use), then `repeats` timed runs, keeping the fastest
   (a neighbour only ever slows a run down).
2. Accuracy, fastest first. The reference scores the whole calibration set once; then each option, fastest
   first, until one passes the gate: that one is served. An option within NEAR of a faster one but listed
   before it (torch, whose thread team Tandem resizes under contention) is judged first. Slower options are
   not judged (their rows say so), which keeps start-up to about 1.5 passes over the set.

The gate judges what a ranking loses, not exact order (the way vLLM's CI and OpenVINO's accuracy control judge
task quality). Per group, the reference's scores are rescaled to the group's range [0, 1] and used as graded
gains:
- nDCG@10 of the option's order (its top 10 by its own scores, gained by the reference's): averaged over the
  groups, and at the worst group;
- top loss: how far below the reference's best passage the option's first passage scores, as a share of the
  group's range, at the worst group.
Rescaling per group makes the measures scale-free: a trained model whose scores spread over many logits and an
untrained head whose scores differ in the third decimal are judged alike. A swap of passages whose reference
scores nearly tie costs almost nothing; moving a clear winner down, or reordering well-separated passages, costs
a lot. The thresholds sit between what bf16 and dynamic int8 lose on the MiniLM-L6-shaped reference model (an
untrained head: near-tied scores) and on the same model fine-tuned on Cranfield (scores spread over logits),
measured on every option (docs/benchmarks.md, scenario 23): bf16 keeps mean nDCG@10 >= 0.9998, worst group
>= 0.9969 and top loss <= 0.014, while int8 loses mean nDCG@10 to <= 0.9902, worst group to <= 0.955, or has
a top loss >= 0.084. Embedders keep the cosine gate (each embedding's cosine with the reference >= 0.999, as
vLLM's CI asks).

An option asked for by name (`--precision int8`) is not gated: the fastest backend at that precision is
served, and its measures are logged. The decision is cached per model files, runtime versions, CPU model,
thread count and option list, so a restart does not measure again; delete the file (its path is logged) to
measure afresh.
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

from tandem.workers.queue import cut_all

log = logging.getLogger(__name__)

K = 10  # nDCG's depth: the served top_n range
# Where bf16 and int8 fall (docs/benchmarks.md, scenario 23): the thresholds sit between them, several times
# clear of each.
MIN_MEAN_NDCG = 0.998  # lose at most 0.2% of nDCG@10 on average
MIN_WORST_NDCG = 0.98  # and at most 2% in any one group
MAX_TOP_LOSS = 0.05  # the first passage within 5% of the group's score range of the reference's best
MIN_COSINE = 0.999
NEAR = 1.05  # speeds this close are a tie
GATE = f"loss gate nDCG@{K} {MIN_MEAN_NDCG}/{MIN_WORST_NDCG}, top {MAX_TOP_LOSS}, cosine {MIN_COSINE}"


@dataclass(frozen=True)
class Option:
    backend: str  # torch | openvino | onnxruntime
    precision: str  # fp32 | bf16 | int8

    def __str__(self) -> str:
        return f"{self.backend} {self.precision}"


REFERENCE = Option("torch", "fp32")


@dataclass
class Trial:
    """How one option did: items per second on the timing groups, and what its ranking loses against the
    reference over the calibration set (NaN where it was not judged)."""

    option: Option
    items_per_second: float = 0.0
    ndcg_mean: float = math.nan  # rerankers: nDCG@K with the reference's scores as gains, over the groups
    ndcg_worst: float = math.nan
    top_loss: float = math.nan  # rerankers: the worst group's top loss, as a share of its score range
    spearman: float = math.nan  # rerankers, for the record: median per-group Spearman
    same_top: float = math.nan  # rerankers, for the record: share of groups with the reference's top passage
    min_cosine: float = math.nan  # embedders: the worst embedding's cosine with the reference
    judged: bool = False  # its agreement was measured
    agrees: bool = False  # meets the gate's thresholds
    passed: bool = False  # may be served: agrees, or was asked for by name (not gated)
    gated: bool = True
    error: str = ""

    def row(self) -> str:
        agree = (f"cosine >= {self.min_cosine:.5f}" if not math.isnan(self.min_cosine) else
                 f"{self.ndcg_mean:.5f} {self.ndcg_worst:.5f}  {self.top_loss:6.4f}  {self.spearman:.4f} "
                 f"{self.same_top:4.0%}" if not math.isnan(self.ndcg_mean) else "")
        verdict = (f"failed: {self.error}" if self.error else
                   "not judged (slower than the one chosen)" if not self.judged else
                   "reference" if self.option == REFERENCE else "agrees" if self.agrees else
                   "loses too much" + ("" if self.gated else ", not gated (asked for)"))
        speed = f"{self.items_per_second:7.1f}/s" if self.items_per_second else " " * 9
        return f"{str(self.option):<17} {speed}  {agree:<44} {verdict}"


@dataclass
class Choice:
    option: Option
    trials: list[Trial] = field(default_factory=list)
    cached_at: str = ""  # the cache file it came from, or was saved to

    def table(self) -> str:
        rows = [t.row() + ("  <- chosen" if t.option == self.option else "") for t in self.trials]
        return "\n".join([f"gate: nDCG@{K} mean >= {MIN_MEAN_NDCG}, worst group >= {MIN_WORST_NDCG}, top loss "
                          f"<= {MAX_TOP_LOSS} of the group's range (rerankers); cosine >= {MIN_COSINE} (embedders)",
                          "option              items/s  nDCG@10 mean worst  top loss  spearman same top  verdict",
                          *rows])


def _group_loss(r: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """(nDCG@K, top loss) of the order `g` gives, with `r`'s scores rescaled to [0, 1] as gains."""
    span = float(r.max() - r.min())
    if span <= 0:
        return 1.0, 0.0  # every passage ties in the reference: no order can lose anything
    gains = (r - r.min()) / span
    order = np.argsort(-g, kind="stable")
    disc = 1.0 / np.log2(np.arange(2, min(K, len(r)) + 2))
    ideal = float(np.sort(gains)[::-1][:K] @ disc)
    return float(gains[order[:K]] @ disc) / ideal, float(1.0 - gains[order[0]])


@dataclass(frozen=True)
class Loss:
    ndcg_mean: float
    ndcg_worst: float
    top_loss: float  # the worst group's
    spearman: float  # median per group, for the record
    same_top: float

    @property
    def agrees(self) -> bool:
        return (self.ndcg_mean >= MIN_MEAN_NDCG and self.ndcg_worst >= MIN_WORST_NDCG
                and self.top_loss <= MAX_TOP_LOSS)


def rerank_loss(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> Loss:
    """What `got`'s rankings lose against `reference`'s, group by group (one array of scores per group)."""
    from scipy.stats import spearmanr

    ndcg, top, rhos, same = [], [], [], []
    for r, g in zip(reference, got):
        r, g = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
        n, t = _group_loss(r, g)
        ndcg.append(n)
        top.append(t)
        # A reference with one score has no order to disagree with; an option with one score has none at all.
        rho = 1.0 if r.min() == r.max() else 0.0 if g.min() == g.max() else spearmanr(r, g).statistic
        rhos.append(1.0 if math.isnan(rho) else float(rho))
        same.append(int(np.argmax(r)) == int(np.argmax(g)))
    return Loss(float(np.mean(ndcg)), float(np.min(ndcg)), float(np.max(top)), float(statistics.median(rhos)),
                float(np.mean(same)))


def min_cosine(reference: np.ndarray, got: np.ndarray) -> float:
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = got / np.linalg.norm(got, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


class _Workload:
    """Groups of items, each cut into served batches once (by the reference's token counts)."""

    def __init__(self, groups: Sequence[Sequence], measure, max_items: int, max_tokens: int):
        self.groups = [list(g) for g in groups]
        self.cuts = [cut_all(measure(g), max_items, max_tokens) for g in self.groups]
        self.items = sum(map(len, self.groups))

    def run(self, backend) -> list[np.ndarray]:
        """Each group's outputs, in the group's order."""
        out = []
        for items, cut in zip(self.groups, self.cuts):
            got: list = [None] * len(items)
            for batch in cut:
                for i, v in zip(batch, backend.run([items[i] for i in batch])):
                    got[i] = v
            out.append(np.asarray(got, dtype=np.float32))
        return out

    def seconds(self, backend, repeats: int) -> float:
        """The fastest of `repeats` timed runs, after a warm-up."""
        self.run(backend)
        best = math.inf
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            self.run(backend)
            best = min(best, time.perf_counter() - t)
        return best


def _judge(kind: str, trial: Trial, reference: list[np.ndarray], got: list[np.ndarray]) -> None:
    trial.judged = True
    if kind == "reranker":
        loss = rerank_loss(reference, got)
        trial.ndcg_mean, trial.ndcg_worst, trial.top_loss = loss.ndcg_mean, loss.ndcg_worst, loss.top_loss
        trial.spearman, trial.same_top = loss.spearman, loss.same_top
        trial.agrees = loss.agrees
    else:
        trial.min_cosine = min_cosine(np.concatenate(reference), np.concatenate(got))
        trial.agrees = trial.min_cosine >= MIN_COSINE


def _by_speed(trials: list[Trial]) -> list[Trial]:
    """Fastest first; an option listed earlier that is within NEAR of a faster one goes before it."""
    listed = {id(t): i for i, t in enumerate(trials)}
    ranked: list[Trial] = []
    for t in sorted(trials, key=lambda t: -t.items_per_second):
        at = len(ranked)
        while at and ranked[at - 1].items_per_second <= t.items_per_second * NEAR \
                and listed[id(ranked[at - 1])] > listed[id(t)]:
            at -= 1
        ranked.insert(at, t)
    return ranked


def choose(kind: str, options: Sequence[Option], build: Callable[[Option], object], groups: Sequence[Sequence],
           timing: Sequence[Sequence], *, max_items: int, max_tokens: int, gate: bool = True, repeats: int = 2,
           cache_file: Path | None = None) -> tuple[Choice, object | None]:
    """The fastest of `options` that passes the gate, and its backend (None when the choice came from the cache:
    build it then). `build(option)` makes a backend with `.measure(items)` (token counts) and `.run(batch)`;
    `groups` are the calibration groups the gate judges, `timing` those speed is timed on, both cut into batches
    of at most `max_items` items and `max_tokens` padded tokens. An option whose build or run fails is reported
    and skipped."""
    if cache_file is not None and cache_file.exists():
        try:
            saved = json.loads(cache_file.read_text())
            choice = Choice(Option(**saved["option"]), [Trial(Option(**t.pop("option")), **t)
                                                        for t in saved["trials"]], str(cache_file))
            if choice.option in options:
                return choice, None
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable backend choice in %s", cache_file)
    reference_backend = build(REFERENCE)
    judged = _Workload(groups, reference_backend.measure, max_items, max_tokens)
    timed = _Workload(timing, reference_backend.measure, max_items, max_tokens)
    trials = [Trial(o, gated=gate) for o in options]
    for trial in trials if len(trials) > 1 else ():  # 1: speed, one option alive at a time (none to rank: skip)
        try:
            backend = reference_backend if trial.option == REFERENCE else build(trial.option)
            trial.items_per_second = timed.items / timed.seconds(backend, repeats)
        except Exception as exc:  # an option this model cannot run (causal LM on OpenVINO, missing package)
            trial.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        backend = None
    reference = judged.run(reference_backend)
    best, best_backend = None, None
    for trial in _by_speed([t for t in trials if not t.error]):  # 2: accuracy, fastest first
        try:
            backend = reference_backend if trial.option == REFERENCE else build(trial.option)
            _judge(kind, trial, reference, reference if trial.option == REFERENCE else judged.run(backend))
        except Exception as exc:
            trial.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            continue
        trial.passed = trial.agrees or not gate
        if trial.passed:
            best, best_backend = trial, backend
            break
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
