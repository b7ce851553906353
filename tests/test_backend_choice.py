"""`--backend auto`: the measured fastest option that agrees with fp32 is served, the gate refuses one that
disagrees, the decision is cached under the right key, and a model a backend cannot run falls back to torch.

The choice itself is tested with stand-in backends of known cost (a sleep per batch), so no assertion depends
on how fast this CPU is; the loading path is tested on real models from disk.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest

from tandem.server.models import load_reranker
from tandem.workers import calibration
from tandem.workers.backend_choice import REFERENCE, Option, choose
from tandem.workers.exported import model_key

GROUPS = [calibration.pairs()[i:i + 16] for i in range(0, 192, 16)]


class StandIn:
    """Scores every pair by a fixed function, sleeping `seconds` per batch."""

    def __init__(self, seconds: float, scramble: float = 0.0, embed: bool = False):
        self.seconds, self.scramble, self.embed = seconds, scramble, embed

    def run(self, batch):
        time.sleep(self.seconds)
        out = []
        for a, b in batch:
            x = float(len(a) * 7 % 13 + len(b) % 97)  # a spread of distinct scores
            x += self.scramble * ((len(b) * 31) % 17)  # a backend that disagrees moves scores apart
            out.append([x, 1.0, 0.5] if self.embed else x)
        return out


def stand_ins(costs: dict, scrambled=(), embed=False):
    built = []

    def build(option):
        built.append(option)
        return StandIn(costs[option], scramble=5.0 if option in scrambled else 0.0, embed=embed)

    return build, built


FAST, SLOW = Option("onnxruntime", "int8"), Option("openvino", "fp32")


def test_the_fastest_option_is_chosen():
    build, _ = stand_ins({REFERENCE: 0.02, SLOW: 0.01, FAST: 0.001})
    choice, backend = choose("reranker", [REFERENCE, SLOW, FAST], build, GROUPS)
    assert choice.option == FAST and isinstance(backend, StandIn) and backend.seconds == 0.001
    speed = {t.option: t.items_per_second for t in choice.trials}
    assert speed[FAST] > speed[SLOW] > speed[REFERENCE]
    assert "<- chosen" in next(line for line in choice.table().splitlines() if line.startswith("onnxruntime int8"))


def test_the_gate_refuses_an_option_that_disagrees_with_fp32():
    build, _ = stand_ins({REFERENCE: 0.02, SLOW: 0.01, FAST: 0.001}, scrambled={FAST})
    choice, _ = choose("reranker", [REFERENCE, SLOW, FAST], build, GROUPS)
    assert choice.option == SLOW
    fast = next(t for t in choice.trials if t.option == FAST)
    assert not fast.passed and fast.spearman < 0.999 and "disagrees with fp32" in fast.row()
    # Asked for by name (no gate), the same option is served, its agreement still reported.
    build, _ = stand_ins({REFERENCE: 0.02, FAST: 0.001}, scrambled={FAST})
    asked, _ = choose("reranker", [FAST], build, GROUPS, gate=False)
    assert asked.option == FAST and asked.trials[0].spearman < 0.999 and "not gated" in asked.trials[0].row()


def test_the_gate_compares_embeddings_by_cosine():
    texts = [[(t, t)] for t in calibration.texts()[:8]]
    build, _ = stand_ins({REFERENCE: 0.01, FAST: 0.001}, scrambled={FAST}, embed=True)
    choice, _ = choose("embedder", [REFERENCE, FAST], build, texts)
    fast = next(t for t in choice.trials if t.option == FAST)
    assert choice.option == REFERENCE and fast.min_cosine < 0.999


def test_an_option_that_fails_is_reported_and_skipped():
    def build(option):
        if option == FAST:
            raise ValueError("this model is a causal LM")
        return StandIn(0.001)

    choice, _ = choose("reranker", [REFERENCE, FAST], build, GROUPS)
    assert choice.option == REFERENCE
    assert "failed: ValueError: this model is a causal LM" in choice.table()
    with pytest.raises(RuntimeError, match="no backend could serve"):
        choose("reranker", [FAST], build, GROUPS)


def test_the_decision_is_cached_and_reused(tmp_path):
    cache = tmp_path / "choice.json"
    build, built = stand_ins({REFERENCE: 0.01, FAST: 0.001})
    first, backend = choose("reranker", [REFERENCE, FAST], build, GROUPS, cache_file=cache)
    assert backend is not None and first.cached_at == str(cache) and json.loads(cache.read_text())["option"] == {
        "backend": "onnxruntime", "precision": "int8"}
    n = len(built)
    again, backend = choose("reranker", [REFERENCE, FAST], build, GROUPS, cache_file=cache)
    assert backend is None and again.option == FAST and len(built) == n  # nothing built or measured again
    assert [t.option for t in again.trials] == [REFERENCE, FAST]
    cache.write_text("{not json")  # a damaged file is measured afresh, not trusted
    third, backend = choose("reranker", [REFERENCE, FAST], build, GROUPS, cache_file=cache)
    assert backend is not None and len(built) > n and json.loads(cache.read_text())["option"]["precision"] == "int8"


def test_the_cache_key_follows_the_model_files_and_versions(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    key = model_key(str(tmp_path), "reranker", "torch 2.13.0", "cpu A")
    assert key == model_key(str(tmp_path), "reranker", "torch 2.13.0", "cpu A")
    assert key != model_key(str(tmp_path), "embedder", "torch 2.13.0", "cpu A")
    assert key != model_key(str(tmp_path), "reranker", "torch 2.14.0", "cpu A")
    assert key != model_key(str(tmp_path), "reranker", "torch 2.13.0", "cpu B")
    (tmp_path / "model.safetensors").write_bytes(b"y" * 11)  # new weights
    assert key != model_key(str(tmp_path), "reranker", "torch 2.13.0", "cpu A")


def test_auto_serves_a_measured_choice_and_reuses_it(tiny_ce, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tandem.server.models")
    first = load_reranker(tiny_ce, "cpu", False, "auto", "auto", str(tmp_path))
    (saved,) = list((tmp_path / "choices").glob("*.json"))
    option = json.loads(saved.read_text())["option"]
    assert (first.backend, first.precision) == (option["backend"], option["precision"])
    assert "measured now" in caplog.text and "torch fp32" in caplog.text and "onnxruntime int8" in caplog.text
    caplog.clear()
    stamp = saved.stat().st_mtime_ns
    again = load_reranker(tiny_ce, "cpu", False, "auto", "auto", str(tmp_path))
    assert "cached in" in caplog.text and saved.stat().st_mtime_ns == stamp
    assert (again.backend, again.precision) == (first.backend, first.precision)
    pairs = calibration.pairs()[:8]
    assert np.allclose(first.run(pairs), again.run(pairs), atol=1e-6)
    # The served scores agree with fp32 torch, as the gate demands.
    ref = load_reranker(tiny_ce, "cpu", False, "fp32", "torch")
    tol = 1e-5 if first.precision == "fp32" else 2e-2
    assert np.allclose(first.run(pairs), ref.run(pairs), atol=tol)


def test_a_causal_reranker_falls_back_to_torch(tmp_path, caplog):
    from tests.support.checkpoints import tiny_causal_reranker

    path = tiny_causal_reranker(tmp_path / "causal")
    caplog.set_level(logging.WARNING, logger="tandem.server.models")
    forced = load_reranker(path, "cpu", False, "fp32", "openvino", str(tmp_path / "cache"))
    assert forced.backend == "torch" and "only the torch backend serves" in caplog.text
    auto = load_reranker(path, "cpu", False, "auto", "auto", str(tmp_path / "cache"))
    assert auto.backend == "torch"
    assert not (tmp_path / "cache" / "openvino").exists() and not (tmp_path / "cache" / "onnxruntime").exists()


def test_onnx_int8_asked_for_logs_its_agreement(minilm_ce, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tandem.server.models")
    b = load_reranker(minilm_ce, "cpu", False, "int8", "onnxruntime", str(tmp_path))
    assert (b.backend, b.precision, b.dtype) == ("onnxruntime", "int8", "int8")
    assert "spearman" in caplog.text and ("not gated (asked for)" in caplog.text or "agrees" in caplog.text)
    assert os.path.exists(tmp_path / "onnxruntime") and list((tmp_path / "onnxruntime").rglob("model_int8.onnx"))
