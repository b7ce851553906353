"""Raw cross-encoder throughput: torch against ONNX Runtime on this CPU, same model and inputs.

    .venv/bin/pip install onnxruntime onnx && python -m benchmarks.onnx_vs_torch

Exports the MiniLM-L6-shaped test cross-encoder locally (no download), checks that the logits agree, then
times 128 Cranfield (query, 60-word passage) pairs at batch sizes 1, 8 and 16, torch and ORT taking turns.
Tandem does not ship an ONNX backend yet; this is the measurement behind that decision (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.support.checkpoints import minilm_cross_encoder
from tests.support.serverproc import REPO


def main() -> None:
    import onnxruntime as ort
    import torch
    from sentence_transformers import CrossEncoder

    tmp = Path(tempfile.mkdtemp(prefix="tandem-onnx-"))
    ce = CrossEncoder(minilm_cross_encoder(tmp / "ce"), device="cpu")
    hf, tok = ce[0].auto_model.eval(), ce.tokenizer
    data = REPO / "datasets" / "cranfield"
    rows = [r for r in map(json.loads, (data / "corpus.jsonl").read_text().splitlines()) if r["text"].strip()]
    queries = [json.loads(x)["text"] for x in (data / "queries.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    pairs = [(rng.choice(queries), " ".join(r["text"].split()[:60])) for r in rng.sample(rows, 128)]

    enc = tok([a for a, _ in pairs[:2]], [b for _, b in pairs[:2]], padding=True, truncation=True,
              return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    torch.onnx.export(hf, tuple(enc[k] for k in names), str(tmp / "ce.onnx"), input_names=names,
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={**{k: {0: "batch", 1: "seq"} for k in names}, "logits": {0: "batch"}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(tmp / "ce.onnx"), opts, providers=["CPUExecutionProvider"])

    def ort_predict(ps):
        e = tok([a for a, _ in ps], [b for _, b in ps], padding=True, truncation=True, return_tensors="np")
        return sess.run(None, {k: e[k].astype(np.int64) for k in names})[0][:, 0]

    ref = ce.predict(pairs[:16], activation_fn=torch.nn.Identity())
    print(f"max |torch - onnxruntime| logit: {float(np.abs(ref - ort_predict(pairs[:16])).max()):.2e}")
    for bs in (1, 8, 16):
        t_rates, o_rates = [], []
        for _ in range(3):
            t = time.perf_counter()
            ce.predict(pairs, batch_size=bs)
            t_rates.append(len(pairs) / (time.perf_counter() - t))
            t = time.perf_counter()
            for i in range(0, len(pairs), bs):
                ort_predict(pairs[i:i + bs])
            o_rates.append(len(pairs) / (time.perf_counter() - t))
        t_, o_ = statistics.median(t_rates), statistics.median(o_rates)
        print(f"batch {bs:>2}: torch {t_:.1f} pairs/s, onnxruntime {o_:.1f} pairs/s, ratio {o_ / t_:.2f}")


if __name__ == "__main__":
    main()
