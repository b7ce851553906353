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
served, and its measures are logged. What is measured is cached per option (Measures), in one file per model
files, runtime versions, CPU model, thread count, gate and calibration set, with the reference's outputs
beside it: a restart measures nothing, and a start with another --precision or --backend measures only the
options never measured before (speeds measured at different starts are compared as they are, as a cached
decision always was). Delete the file (its path is logged) to measure afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
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
        speed = f"{self.items_per_second:7.1f}/s" if self.items_per_second else " " * 9
        return f"{str(self.option):<17} {speed}  {agree:<44} {self.verdict()}"

    def verdict(self) -> str:
        return (f"failed: {self.error}" if self.error else
                "not judged (slower than the one chosen)" if not self.judged else
                "reference" if self.option == REFERENCE else "agrees" if self.agrees else
                "loses too much" + ("" if self.gated else ", not gated (asked for)"))


@dataclass
class Choice:
    option: Option
    trials: list[Trial] = field(default_factory=list)
    cached_at: str = ""  # the file the measurements were read from and saved to
    measured: tuple[Option, ...] = ()  # the options timed or judged in this call (the rest were read back)

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


class Measures:
    """What has been measured of one model on this machine: each option's trial and the reference's outputs, in
    one file (`cache_file`) and a `.npz` beside it. Any set of options reads what it shares with another: a
    restart with another --precision or --backend measures only what was never measured. Read and written under
    `_measuring`'s lock, so what one process saves the next reads whole."""

    def __init__(self, cache_file: Path | None):
        self.file = cache_file
        self.trials: dict[Option, Trial] = {}
        self.reference: list[np.ndarray] | None = None
        if cache_file is None:
            return
        try:
            if cache_file.exists():
                for t in json.loads(cache_file.read_text())["trials"]:
                    trial = Trial(Option(**t.pop("option")), **t)
                    self.trials[trial.option] = trial
            ref = cache_file.with_suffix(".npz")
            if ref.exists():
                with np.load(ref) as z:
                    self.reference = [z[f"g{i}"] for i in range(len(z.files))]
        except (ValueError, KeyError, TypeError, OSError, EOFError):
            log.warning("ignoring unreadable backend measurements in %s", cache_file)
            self.trials, self.reference = {}, None

    def trial(self, option: Option, gate: bool) -> Trial:
        """The option's saved measurements (its verdict for this request's gate), or a fresh Trial."""
        t = self.trials.get(option)
        if t is None:
            return Trial(option, gated=gate)
        t = Trial(**{**asdict(t), "option": option, "gated": gate})
        t.passed = t.judged and (t.agrees or not gate)
        return t

    def save(self, trials: Sequence[Trial], reference: list[np.ndarray] | None) -> None:
        if self.file is None:
            return
        merged = dict(self.trials)  # the options this call did not ask for stay as they were
        merged.update({t.option: t for t in trials if t.items_per_second or t.judged or t.error})
        tmp = self.file.with_name(f"{self.file.stem}.{os.getpid()}.tmp")
        ref = self.file.with_name(f"{self.file.stem}.{os.getpid()}.npz")
        try:  # each file whole or not at all: written aside, then renamed
            tmp.write_text(json.dumps({"trials": [asdict(t) for t in merged.values()]}, indent=1, default=str))
            tmp.rename(self.file)
            if reference is not None and self.reference is None:
                np.savez(ref, **{f"g{i}": r for i, r in enumerate(reference)})
                ref.rename(self.file.with_suffix(".npz"))
        except OSError as exc:  # a full disk: what was measured serves this start, and is measured again next time
            log.warning("could not save the backend measurements in %s (%s); the next start measures again",
                        self.file, exc.strerror or exc)
            for f in (tmp, ref):
                f.unlink(missing_ok=True)


def choose(kind: str, options: Sequence[Option], build: Callable[[Option], object], groups: Sequence[Sequence],
           timing: Sequence[Sequence], *, max_items: int, max_tokens: int, gate: bool = True, repeats: int = 2,
           cache_file: Path | None = None) -> tuple[Choice, object | None]:
    """The fastest of `options` that passes the gate, and its backend (None when nothing had to be built: build
    it then). `build(option)` makes a backend with `.measure(items)` (token counts) and `.run(batch)`; `groups`
    are the calibration groups the gate judges, `timing` those speed is timed on, both cut into batches of at
    most `max_items` items and `max_tokens` padded tokens. An option whose build or run fails is reported and
    skipped. With `cache_file`, what was measured before on this model is reused (Measures) and what is
    measured now is added."""
    with _measuring(cache_file) as usable:
        return _choose(kind, options, build, groups, timing, max_items, max_tokens, gate, repeats, usable)


@contextlib.contextmanager
def _measuring(cache_file: Path | None):
    """One process measures a model at a time: a second server starting beside it (a fleet on one host, a test
    run in parallel) waits, then reads back what the first measured instead of timing it again, contended."""
    if cache_file is None:
        yield None
        return
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        lock = open(cache_file.with_suffix(".lock"), "w")
    except OSError as exc:  # a read-only or full disk must not stop a start: measure, serve, and say so
        log.warning("cannot use the backend measurement cache %s (%s): measuring without it, nothing is saved",
                    cache_file, exc.strerror or exc)
        yield None
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield cache_file


def _choose(kind, options, build, groups, timing, max_items, max_tokens, gate, repeats, cache_file):
    saved = Measures(cache_file)
    trials = [saved.trial(o, gate) for o in options]
    made: dict[Option, object] = {}  # backends built in this call, released as soon as they are not needed

    def backend_for(option: Option):
        if option not in made:
            made[option] = build(option)
        return made[option]

    work: dict[str, _Workload] = {}

    def workload(name: str, items: Sequence[Sequence], backend) -> _Workload:
        if name not in work:  # cut once, by the token counts of the first backend at hand (one tokenizer)
            work[name] = _Workload(items, backend.measure, max_items, max_tokens)
        return work[name]

    def run(name: str, items: Sequence[Sequence], option: Option) -> list[np.ndarray]:
        backend = backend_for(option)
        return workload(name, items, backend).run(backend)

    def fail(trial: Trial, exc: Exception) -> None:  # an option this model cannot run (causal LM on OpenVINO)
        trial.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"

    measured: dict[Option, None] = {}
    for trial in trials if len(trials) > 1 else ():  # 1: speed, one option alive at a time (none to rank: skip)
        if trial.items_per_second or trial.error:
            continue
        measured[trial.option] = None
        try:
            backend = backend_for(trial.option)
            timed = workload("timing", timing, backend)
            trial.items_per_second = timed.items / timed.seconds(backend, repeats)
        except Exception as exc:
            fail(trial, exc)
        if trial.option != REFERENCE:
            made.pop(trial.option, None)
        backend = None
    reference = saved.reference
    best = None
    for trial in _by_speed([t for t in trials if not t.error]):  # 2: accuracy, fastest first
        if not trial.judged:
            measured[trial.option] = None
            try:
                if reference is None:
                    reference = run("judged", groups, REFERENCE)
                got = reference if trial.option == REFERENCE else run("judged", groups, trial.option)
                _judge(kind, trial, reference, got)
            except Exception as exc:
                fail(trial, exc)
                continue
        trial.passed = trial.agrees or not gate
        if trial.passed:
            best = trial
            break
        made.pop(trial.option, None)
    if measured:
        saved.save(trials, reference)
    if best is None:
        raise RuntimeError("no backend could serve this model:\n" + "\n".join(t.row() for t in trials))
    return Choice(best.option, trials, str(cache_file or ""), tuple(measured)), made.get(best.option)
