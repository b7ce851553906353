"""Splitting a batch into forward passes of similar length: the plan is optimal, the costs come from the model,
and a split batch scores exactly what the pairs score alone."""

from __future__ import annotations

import asyncio
import json
import itertools
import math
import time

import pytest
from hypothesis import given, settings, strategies as st

from tests.support.data import load_beir
from tandem.workers import Batcher, BatchLimits, BackendError
from tandem.workers.compute import compute_pool
from tandem.workers.passes import PassCost, calibrate, fit_pass_cost, split


def _cost(lengths, ends, overhead):
    starts = [0, *ends[:-1]]
    return sum(overhead + (j - i) * lengths[j - 1] for i, j in zip(starts, ends))


def _brute_force(lengths, overhead):
    n = len(lengths)
    best = math.inf
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            best = min(best, _cost(lengths, [*cuts, n], overhead))
    return best


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 512), min_size=1, max_size=9), st.floats(0, 300))
def test_split_finds_the_cheapest_passes(lengths, overhead):
    lengths = sorted(lengths)
    ends = split(lengths, overhead)
    assert ends[-1] == len(lengths) and ends == sorted(set(ends))  # every item once, in order
    assert _cost(lengths, ends, overhead) == pytest.approx(_brute_force(lengths, overhead))


def test_split_keeps_a_batch_whole_unless_padding_costs_more_than_a_pass():
    assert split([40] * 16, 70) == [16]  # no padding: nothing to save
    assert split([5] * 8 + [200] * 2, math.inf) == [10]  # no per-token cost (a roomy GPU): never split
    assert split([5] * 8 + [200] * 2, 70) == [8, 10]  # 8 x 195 padded tokens saved for one more pass
    assert split([30, 31, 33, 35], 70) == [4]  # a few tokens of padding do not pay for a pass
    assert split([], 70) == []
    assert PassCost(0.002, 0.0).overhead_tokens == math.inf


@pytest.fixture(scope="module")
def minilm(minilm_ce):
    from tandem.server.models import load_reranker
    from tandem.server.precision import Precision

    return load_reranker(minilm_ce, "cpu", False, Precision("fp32", "test"), "torch")


def test_pass_cost_is_measured_from_the_model_at_load(minilm):
    # On a CPU both parts are real: a fixed cost per pass (dispatch and the thread team's fork/join, per op) and
    # a cost per padded token. How many tokens the fixed part is worth depends on the machine and its load.
    # Under a busy neighbour the two shapes can time alike, and the fit then says "never split" (token part 0):
    # a sound answer, so the checks below hold either way, and the known-cost test pins the arithmetic.
    assert minilm.pass_cost is not None, "calibrate() sets the cost at load"
    for c in (minilm.pass_cost, fit_pass_cost(minilm.run, minilm.measure, *minilm.calibration_batches(), repeats=3)):
        assert c.fixed_seconds > 0 and c.token_seconds >= 0, c
        if c.token_seconds > 0:
            assert c.overhead_tokens == pytest.approx(c.fixed_seconds / c.token_seconds), c
        else:
            assert c.overhead_tokens == math.inf and split([10, 20, 400], c.overhead_tokens) == [3], c


def test_measure_recovers_a_known_cost():
    """A stand-in model whose pass takes 4 ms + 40 us per padded token (the MiniLM-L6 shape on this CPU):
    the fixed part is worth 100 tokens, and the fit must find it from two shapes."""
    def run(batch):
        time.sleep(0.004 + 0.00004 * max(batch) * len(batch))

    c = fit_pass_cost(run, lambda batch: list(batch), [16], list(range(18, 50, 2)))
    assert 60 < c.overhead_tokens < 160, c
    assert 0.002 < c.fixed_seconds < 0.008 and 0.00002 < c.token_seconds < 0.00008, c
    # Cost flat in tokens (a GPU with room): the fixed part outweighs any padding a batch can hold.
    assert fit_pass_cost(lambda batch: time.sleep(0.003), lambda batch: list(batch), [16], [512] * 4).overhead_tokens > 1000


class _StandIn:
    """A backend whose pass takes 4 ms + 40 us per padded token, counting its passes."""
    pass_cost = None

    def __init__(self):
        self.runs = 0

    def run(self, batch):
        self.runs += 1
        time.sleep(0.004 + 0.00004 * max(batch) * len(batch))

    def measure(self, batch):
        return list(batch)

    def calibration_batches(self):
        return [16], list(range(18, 50, 2))


def test_a_pass_cost_measured_before_is_read_back_and_the_shapes_only_warm_up(tmp_path, caplog):
    saved = tmp_path / "passes" / "m.json"
    first = _StandIn()
    cost, now = calibrate(first, repeats=3, cache_file=saved)
    assert now and first.pass_cost == cost and first.runs == 2 + 2 * 3 and saved.exists()
    again = _StandIn()
    assert calibrate(again, repeats=3, cache_file=saved) == (cost, False)
    assert again.pass_cost == cost and again.runs == 2  # each shape once, as a warm-up
    for bad in ("{not json", '{"fixed_seconds": -1, "token_seconds": 0}', '{"fixed_seconds": 1}'):
        saved.write_text(bad)  # unreadable or unsound: measured again and rewritten
        third = _StandIn()
        c, now = calibrate(third, repeats=3, cache_file=saved)
        assert now and third.runs == 8 and json.loads(saved.read_text())["fixed_seconds"] == c.fixed_seconds
    # A cache folder that cannot be made (a file stands in its way): measured, served, and said once.
    (tmp_path / "blocked").write_text("")
    fourth = _StandIn()
    c, now = calibrate(fourth, repeats=3, cache_file=tmp_path / "blocked" / "m.json")
    assert now and fourth.pass_cost == c and caplog.text.count("could not cache the pass cost") == 1


class Passes:
    """The batcher's observer, keeping each forward pass."""

    def __init__(self):
        self.passes: list[tuple[int, int]] = []

    def queue_depth(self, items): pass
    def dequeued(self, wait_seconds): pass
    def dropped(self, reason, items): pass

    def batch(self, items, padded_tokens, seconds):
        self.passes.append((items, padded_tokens))


async def _one_cut(batcher: Batcher, pool, payload_sets):
    """Every request in one cut: a first request is cut alone and waits behind a held compute thread, while
    the rest queue (a long text is measured on a thread, so it arrives a little later than short ones)."""
    hold = asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0.5)
    first = asyncio.ensure_future(batcher.submit(payload_sets[0]))
    await asyncio.sleep(0.05)
    calls = [asyncio.ensure_future(batcher.submit(p)) for p in payload_sets]
    await hold
    await first
    return await asyncio.gather(*calls, return_exceptions=True)


async def test_mixed_lengths_run_as_several_passes_with_exact_scores(minilm):
    corpus, queries = load_beir("cranfield", limit=40)
    q = queries[0]["text"]
    short = [(q, d["title"]) for d in corpus[:12]]
    long = [(q, d["text"]) for d in corpus[12:16]]
    obs = Passes()
    pool = compute_pool("cpu-test-passes")
    b = Batcher("mixed", minilm, BatchLimits(max_batch_size=32, max_batch_tokens=0), obs, executor=pool)
    b.start()
    try:
        results = await _one_cut(b, pool, [[p] for p in short + long])
    finally:
        await b.stop()
    del obs.passes[0]  # the first request, cut alone
    lengths = sorted(min(n, minilm.max_length) for n in minilm.measure(short + long))
    assert len(obs.passes) >= 2, obs.passes  # 12 titles did not pad to the abstracts' length
    assert sum(n for n, _ in obs.passes) == 16
    assert sum(t for _, t in obs.passes) < lengths[-1] * 16
    for pair, (scores, _) in zip(short + long, results):
        # fp32: a pair scores the same in any pass it lands in (1e-4, as the batching tests)
        assert scores[0] == pytest.approx(minilm.run([pair])[0], abs=1e-4)

    obs.passes.clear()
    whole = Batcher("whole", minilm, BatchLimits(max_batch_size=32, max_batch_tokens=0, split_by_length=False),
                    obs, executor=pool)
    whole.start()
    try:
        await _one_cut(whole, pool, [[p] for p in short + long])
    finally:
        await whole.stop()
    assert obs.passes[1:] == [(16, lengths[-1] * 16)]  # the switch keeps today's one pass


class PoisonBackend:
    """Stands in for a model whose forward pass fails on one input: which items fail with it?"""

    name = kind = "poison"
    max_length = 512
    pass_cost = PassCost(0.002, 0.00004)

    def measure(self, texts, inline=False):
        return [len(t) for t in texts]

    def run(self, texts):
        if any("poison" in t for t in texts):
            raise FloatingPointError("model produced a non-finite score")
        return [len(t) for t in texts]


async def test_a_failing_pass_fails_only_its_own_items():
    pool = compute_pool("cpu-test-poison")
    b = Batcher("poison", PoisonBackend(), BatchLimits(max_batch_size=32, max_batch_tokens=0), executor=pool)
    b.start()
    try:
        results = await _one_cut(b, pool, [["ab"], ["abc"], ["abcd"], ["poison" + "x" * 300]])
    finally:
        await b.stop()
    assert [r[0] for r in results[:3]] == [[2], [3], [4]]
    assert isinstance(results[3], BackendError) and "non-finite" in str(results[3])


def test_token_counts_match_the_transformers_call(tmp_path):
    """`measure` counts with the tokenizer's Rust core, set up once; the lengths (the batch's padding, its token
    budget and `truncated` in usage) must be what the transformers call gives, truncation included."""
    from transformers import AutoTokenizer

    from tests.support.checkpoints import bundled_encoder, tiny_causal_reranker
    from tandem.workers.backends import token_counter

    corpus, queries = load_beir("cranfield", limit=200)
    texts = [d["text"] for d in corpus] + [d["title"] for d in corpus]
    odd = ["", " ", "[SEP] inside [CLS] text", "naïve café — “quoted” …", "长文档的段落检索与重排序",
           "word " * 600, "x" * 3000, "emoji 🙂🚀 and\ttabs\nnewlines"]
    pairs = [(queries[i % len(queries)]["text"], t) for i, t in enumerate(texts + odd)]
    pairs += [("word " * 400, "short"), ("", "")]
    for path in (bundled_encoder(), tiny_causal_reranker(tmp_path / "causal")):
        tok = AutoTokenizer.from_pretrained(path)
        for max_length in (512, 129, 33):
            count = token_counter(tok, max_length)
            want = tok([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=max_length)
            assert count(pairs) == [len(x) for x in want["input_ids"]]
            want = tok(texts + odd, truncation=True, max_length=max_length)
            assert count(texts + odd) == [len(x) for x in want["input_ids"]]


def test_the_pass_cost_is_refitted_from_served_passes():
    """A plan measured beside a busy neighbour is not kept for good: the fit follows the passes actually run."""
    import random

    from tandem.workers.passes import CostFit

    rng = random.Random(1)
    fit, refits = CostFit(window=128, every=64), []
    for _ in range(256):
        tokens = rng.randint(20, 600)
        refit = fit.observe(tokens, (0.004 + 0.00004 * tokens) * rng.uniform(0.95, 1.05))
        if refit is not None:
            refits.append(refit)
    assert len(refits) == 4
    assert refits[-1].fixed_seconds == pytest.approx(0.004, rel=0.25)
    assert refits[-1].token_seconds == pytest.approx(0.00004, rel=0.1)
    same = CostFit(every=8)
    assert all(same.observe(100, 0.01) is None for _ in range(64))  # one size only: nothing to fit
