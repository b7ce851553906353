"""Precision in-process: bf16 ranks like fp32, the embedder keeps its retrieval quality, converted models are
cached and equal torch, and a combination the device would only emulate fails at startup with what to use.
Served scores at each backend and precision: tests/test_precision_served.py (a module of its own, so that
pytest-xdist can run the two side by side)."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from tandem.server.precision import Precision, plan
from tandem.workers.backend_choice import Option
from tests.support.data import load_beir
from tests.support.precision import cranfield_texts, needs_bf16, reference
from tests.support.serverproc import REPO


@pytest.fixture(scope="module")
def cranfield():
    return cranfield_texts()


def test_openvino_ir_is_converted_once_and_cached(minilm_ce, tmp_path):
    import time

    first = time.perf_counter()
    a = reference(minilm_ce, "fp32", "openvino", str(tmp_path))
    first = time.perf_counter() - first
    (xml,) = list(tmp_path.rglob("model.xml"))
    stamp = xml.stat().st_mtime_ns
    again = time.perf_counter()
    b = reference(minilm_ce, "fp32", "openvino", str(tmp_path))
    again = time.perf_counter() - again
    assert xml.stat().st_mtime_ns == stamp and len(list(tmp_path.rglob("model.xml"))) == 1  # reused, not rebuilt
    assert again < first
    pairs = [("wing flutter", "flutter of a swept wing at transonic speed"), ("heat", "a cold plate")]
    torch_fp32 = reference(minilm_ce, "fp32").run(pairs)
    assert a.run(pairs) == pytest.approx(torch_fp32, abs=1e-5) and b.run(pairs) == pytest.approx(torch_fp32, abs=1e-5)


def test_openvino_embedder_equals_torch(tmp_path):
    from sentence_transformers import SentenceTransformer

    from tandem.server.models import load_embedder
    from tests.support.checkpoints import bundled_encoder

    texts = ["a wing in a slipstream", "heat transfer " * 100, "x"]
    ov = load_embedder(bundled_encoder(), "cpu", False, Precision("fp32", "test"), "openvino", str(tmp_path))
    ref = SentenceTransformer(bundled_encoder(), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.abs(np.stack(ov.run(texts)) - ref).max() < 1e-5  # lengths padded to a multiple of 16 (below)
    # OpenVINO keeps compiled kernels per input shape: lengths rounded up to a multiple of 16 keep the shapes few
    # (a 30-minute soak grew by 600 MB before), never past the model's limit.
    lengths = {ov._features([" ".join(["wing"] * n)])["input_ids"].shape[1] for n in range(1, 200, 3)}
    assert all(n % 16 == 0 or n == ov.max_length for n in lengths) and len(lengths) <= 200 // 16 + 2, lengths
    assert max(lengths) <= ov.max_length


@needs_bf16
def test_bf16_ranks_like_fp32(minilm_ce, cranfield):
    from scipy.stats import spearmanr

    queries, docs = cranfield
    rng = random.Random(3)
    groups = [(q, rng.sample(docs, 10)) for q in queries[:20]]
    pairs = [(q, d[:600]) for q, ds in groups for d in ds]
    scores = {}
    for prec in ("fp32", "bf16"):
        b = reference(minilm_ce, prec)
        scores[prec] = np.concatenate([b.run(pairs[i:i + 10]) for i in range(0, len(pairs), 10)])
    assert spearmanr(scores["fp32"], scores["bf16"]).correlation >= 0.999
    same_top = np.mean([np.argmax(scores["fp32"][i:i + 10]) == np.argmax(scores["bf16"][i:i + 10])
                        for i in range(0, len(pairs), 10)])
    assert same_top >= 0.95


@needs_bf16
@pytest.mark.parametrize("dataset", ["cranfield", "cisi"])
def test_bf16_embedder_keeps_ndcg(dataset):
    """The bundled embedder in bf16 retrieves as well as in fp32 (exact cosine search, nDCG@10 within 0.005)."""
    from sentence_transformers import SentenceTransformer

    from tandem.evaluate import load_queries, score
    from tests.support.checkpoints import bundled_encoder
    from tests.support.data import DATA
    from tandem.workers.backends import EmbedderBackend

    corpus, _ = load_beir(dataset)
    docs = [(d["_id"], f"{d['title']} {d['text']}".strip()) for d in corpus if (d["title"] + d["text"]).strip()]
    queries, qrels = load_queries(DATA / dataset)
    order = sorted(range(len(docs)), key=lambda i: len(docs[i][1]))  # similar lengths batch with less padding
    ndcg = {}
    for prec in ("fp32", "bf16"):
        b = EmbedderBackend(SentenceTransformer(bundled_encoder(), device="cpu"), "e", precision=prec)
        vecs = np.zeros((len(docs), 384), dtype=np.float32)
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            vecs[idx] = np.stack(b.run([docs[j][1] for j in idx]))
        q = np.stack(b.run(list(queries.values())))
        sims = q @ vecs.T
        run = {qid: {docs[j][0]: float(row[j]) for j in np.argsort(-row)[:100]} for qid, row in zip(queries, sims)}
        ndcg[prec] = score(run, qrels)["nDCG@10"]
    assert abs(ndcg["bf16"] - ndcg["fp32"]) <= 0.005, ndcg


@pytest.mark.parametrize("args, words", [
    (["--precision", "fp16"], "use --precision"),
    (["--precision", "int8", "--device", "cpu", "--backend", "openvino"], "use --backend torch or onnxruntime"),
    pytest.param(["--precision", "bf16", "--device", "cpu", "--backend", "onnxruntime"], "runs fp32 or int8",
                 marks=needs_bf16),
    (["--backend", "onnx"], "auto, torch, openvino, onnxruntime"),
    (["--precision", "double"], "auto, fp32, bf16, fp16, int8"),
])
def test_unsupported_combination_fails_at_startup(tmp_path, args, words):
    r = subprocess.run([sys.executable, "-m", "tandem.server.cli", "serve", "--reranker", "none", *args,
                        "--milvus-uri", str(tmp_path / "m.db"), "--port", "0", "--metrics-port", "-1"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert r.returncode == 2 and words in r.stderr, r.stderr[-2000:]


def test_plan_follows_the_device():
    everything = {"torch", "openvino", "onnxruntime"}.__contains__
    assert plan("auto", "cuda", bf16_flag="").options == (Option("torch", "fp16"),)  # nothing changes on CUDA
    with_bf16 = plan("auto", "cpu", bf16_flag="amx_bf16", available=everything)
    assert with_bf16.gate and set(with_bf16.options) == {
        Option(b, p) for b, p in [("torch", "fp32"), ("torch", "bf16"), ("torch", "int8"), ("openvino", "fp32"),
                                  ("openvino", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]}
    no_bf16 = plan("auto", "cpu", bf16_flag="", available=everything)
    assert all(o.precision != "bf16" for o in no_bf16.options)  # emulated bf16 is never a candidate
    asked = plan("int8", "cpu", bf16_flag="", available=everything)
    assert not asked.gate and set(asked.options) == {Option("torch", "int8"), Option("onnxruntime", "int8")}
    forced = plan("auto", "cpu", "openvino", bf16_flag="avx512_bf16", available=everything)
    assert set(forced.options) == {Option("openvino", "fp32"), Option("openvino", "bf16")}
    assert plan("auto", "cpu", bf16_flag="", available={"torch"}.__contains__).options == (
        Option("torch", "fp32"), Option("torch", "int8"))
    with pytest.raises(ValueError, match="use --precision fp32"):
        plan("bf16", "cpu", bf16_flag="")
    with pytest.raises(ValueError, match="needs the openvino package"):
        plan("auto", "cpu", "openvino", available={"torch"}.__contains__)
    with pytest.raises(ValueError, match="on cuda use --backend torch"):
        plan("auto", "cuda", "onnxruntime")
