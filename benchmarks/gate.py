"""What each backend and precision loses against fp32 torch, on an untrained and a fine-tuned reranker: the
measurement behind the gate's thresholds (workers/backend_choice.py).

    .venv/bin/python -m benchmarks.gate [--epochs 2]

Two models of the reference shape (MiniLM-L6, 22M parameters):
- reference: the bundled all-MiniLM-L6-v2 encoder with a seeded 1-logit head (tests/support/checkpoints.py).
  Untrained: its scores nearly tie, so any rounding reorders some passages.
- fine-tuned: the same, trained here for `--epochs` on Cranfield's judged pairs (queries outside the
  calibration set, one random negative per positive). Its scores spread over several logits with a few near-ties
  at the top, as a trained reranker's do. It exists to check the gate on that shape of scores: no ranking
  quality is claimed for it.
Every option runs the whole calibration set in served batches; the table gives the gate's measures, the
record-only Spearman and same-top share (the old gate's), and both verdicts. Speeds are from one timed run of
the timing groups after a warm-up, on this CPU, with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from benchmarks.peers import cpu_model
from tests.support.checkpoints import minilm_cross_encoder
from tests.support.serverproc import REPO

OPTIONS = [("torch", "fp32"), ("torch", "bf16"), ("torch", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
           ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


def fine_tune(base: str, out: Path, epochs: int, seed: int = 0) -> str:
    import torch
    from sentence_transformers import CrossEncoder

    from tandem.workers import calibration

    if (out / "config.json").exists():
        return str(out)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = REPO / "datasets" / "cranfield"
    docs = {d["_id"]: d["text"] for d in map(json.loads, (data / "corpus.jsonl").read_text().splitlines())
            if d["text"].strip()}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (data / "queries.jsonl").read_text().splitlines())}
    held_out = {q for q, _ in calibration.groups()}
    positives: dict[str, list[str]] = {}
    for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, rel = line.split("\t")[:3]
        if int(rel) > 0 and d in docs and queries.get(q) not in held_out:
            positives.setdefault(q, []).append(d)
    ids = sorted(docs)
    pairs = []
    for q, ds in positives.items():
        for d in ds[:6]:
            pairs.append((queries[q], " ".join(docs[d].split()[:90]), 1.0))
            pairs.append((queries[q], " ".join(docs[rng.choice(ids)].split()[:90]), 0.0))
    rng.shuffle(pairs)
    ce = CrossEncoder(base, num_labels=1, max_length=160, device="cpu")
    model, tok = ce.model, ce.tokenizer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for i in range(0, len(pairs), 16):
            b = pairs[i:i + 16]
            f = tok([x[0] for x in b], [x[1] for x in b], padding=True, truncation=True, max_length=160,
                    return_tensors="pt")
            loss = loss_fn(model(**f).logits.squeeze(-1), torch.tensor([x[2] for x in b]))
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    ce.save(str(out))
    return str(out)


def measure(ce: str, cache: Path) -> dict:
    from sentence_transformers import CrossEncoder

    from tandem.server import models
    from tandem.server.config import Config
    from tandem.workers import backend_choice as bc
    from tandem.workers import calibration
    from tandem.workers.backends import CrossEncoderBackend

    r = models.resolve(ce, False)
    limits = Config().rerank_limits("cpu")
    groups = [[(q, p) for p in ps] for q, ps in calibration.groups()]
    timing = [[(q, p) for p in ps] for q, ps in calibration.timing_groups()]
    out, reference, judged, timed = {}, None, None, None
    for backend, precision in OPTIONS:
        option = bc.Option(backend, precision)
        try:
            b = models._build("reranker", CrossEncoder, CrossEncoderBackend, r, "cpu", option, str(cache), "gate")
        except Exception as exc:  # no native bf16 here, or a package missing
            out[str(option)] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        if judged is None:
            judged = bc._Workload(groups, b.measure, limits.max_batch_size, limits.max_batch_tokens)
            timed = bc._Workload(timing, b.measure, limits.max_batch_size, limits.max_batch_tokens)
        scores = judged.run(b)
        reference = reference if reference is not None else scores
        loss = bc.rerank_loss(reference, scores)
        old = loss.spearman >= 0.999 and loss.same_top >= 0.99
        out[str(option)] = {"items_per_s": timed.items / timed.seconds(b, 1), **loss.__dict__,
                            "new_gate": loss.agrees, "old_gate": old}
        del b
    spans = [float(np.ptp(r)) for r in reference]
    out["_scores"] = {"median_group_range": float(np.median(spans)), "min_group_range": float(min(spans))}
    return out


def table(name: str, res: dict) -> str:
    s = res["_scores"]
    lines = [f"{name}: per-group score range median {s['median_group_range']:.3f}, min {s['min_group_range']:.4f}",
             "| option | items/s | nDCG@10 mean | worst group | top loss (worst) | Spearman (median) | same top | "
             "gate | old gate |", "|---|---|---|---|---|---|---|---|---|"]
    for option, r in res.items():
        if option.startswith("_"):
            continue
        if "error" in r:
            lines.append(f"| {option} | {r['error']} |")
            continue
        lines.append(f"| {option} | {r['items_per_s']:.1f} | {r['ndcg_mean']:.5f} | {r['ndcg_worst']:.5f} | "
                     f"{r['top_loss']:.4f} | {r['spearman']:.5f} | {r['same_top']:.0%} | "
                     f"{'pass' if r['new_gate'] else 'fail'} | {'pass' if r['old_gate'] else 'fail'} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-gate"))
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "gate.json")
    args = p.parse_args(argv)
    from tandem.workers import backend_choice as bc

    t = time.time()
    reference = minilm_cross_encoder(args.workdir / "reference")
    tuned = fine_tune(reference, args.workdir / f"fine-tuned-{args.epochs}", args.epochs)
    report = {"cpu": cpu_model(), "gate": bc.GATE, "trained_in_s": round(time.time() - t),
              "models": {"reference (untrained head)": measure(reference, args.workdir / "cache"),
                         "fine-tuned on Cranfield": measure(tuned, args.workdir / "cache")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"CPU: {report['cpu']}; {report['gate']}")
    for name, res in report["models"].items():
        print(table(name, res), "\n")
    return report


if __name__ == "__main__":
    main()
