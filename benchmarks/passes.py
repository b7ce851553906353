"""Scenario 14 for `tandem bench`: tiny requests, batches split by length, and the event loop.

 14. Four servers at the default precision take turns: the default (a batch of mixed lengths runs as the passes
     that cost least, workers/passes.py; uvloop), `--split-by-length false`, `--event-loop asyncio`, and both
     off (v0.2's serving path). Two workloads: 1 title x 32 clients (issue 12's tiny-request target) and 20-50
     passages x 16 clients. Each window is paired with raw `run` throughput measured right before it in this
     process at the same precision:
       - raw best: consecutive batches of 8, 16 or 32 pairs, the best of the three (the issue's baseline);
       - raw sorted: the same pairs sorted by length first, then batches of 16, which no online server can
         match (it sees only what is queued), shown so the gain from splitting is not mistaken for free speed.
     The server's own metrics, read by the load generator at the window's edges, give the mean pass size, the
     padded tokens per pair and the compute thread's busy share in each window.
"""

from __future__ import annotations

import statistics
import time

from benchmarks.precision import _passage


def _raw_rates(model, pairs, reps: int = 1) -> dict:
    def rate(items, bs):
        t = time.perf_counter()
        for _ in range(reps):
            for i in range(0, len(items), bs):
                model.run(items[i:i + bs])
        return reps * len(items) / (time.perf_counter() - t)

    lengths = model.measure(pairs)
    by_length = [p for _, p in sorted(zip(lengths, range(len(pairs))))]
    return {"best": max(rate(pairs, bs) for bs in (8, 16, 32)),
            "sorted": rate([pairs[i] for i in by_length], 16)}


def _pass_stats(window: dict) -> dict:
    """From the server's metrics at the window's edges: pass size, padding, and the compute thread's busy share."""
    from tests.support.metricsparse import value

    before, after = window["metrics"]
    d = {k: value(after, k, worker="reranker") - value(before, k, worker="reranker")
         for k in ("tandem_batch_size_count", "tandem_batch_size_sum", "tandem_batch_tokens_sum",
                   "tandem_batch_compute_seconds_sum")}
    pairs = max(1.0, d["tandem_batch_size_sum"])
    return {"mean_pass": pairs / max(1.0, d["tandem_batch_size_count"]),
            "padded_tokens_per_pair": d["tandem_batch_tokens_sum"] / pairs,
            "compute_busy": d["tandem_batch_compute_seconds_sum"] / window["seconds"]}


def s14_length_split(bench) -> None:
    from tandem.server.models import load_reranker

    raw = load_reranker(bench.ce_path, "cpu", False)  # the servers' default, from the same cached choice
    titles = [r["title"] for r in bench.rows if r["title"].strip()]
    passages = [_passage(r["text"]) for r in bench.rows]
    workloads = {
        "1 title": ([{"query": bench.queries[i % len(bench.queries)], "documents": [titles[i % len(titles)]]}
                     for i in range(256)], 32),
        "20-50 passages": (bench.rerank_requests(64, (20, 50), passages), 16),
    }
    servers = {"default": bench.server("s14-default"),
               "one pass per batch": bench.server("s14-one-pass", "--split-by-length", "false"),
               "asyncio loop": bench.server("s14-asyncio", "--event-loop", "asyncio"),
               "v0.2 path (both off)": bench.server("s14-v02", "--split-by-length", "false",
                                                    "--event-loop", "asyncio")}
    rows, gains = [], {}
    rounds = 2 if bench.quick else 5
    try:
        for wl, (reqs, clients) in workloads.items():
            pairs = [(r["query"], d) for r in reqs for d in r["documents"]][:256]
            raw.run(pairs[:32])  # warm-up
            runs: dict = {label: [] for label in servers}
            for _ in range(rounds):
                for label, srv in servers.items():  # servers take turns; each window right after its raw baseline
                    base = _raw_rates(raw, pairs)
                    r = bench.load(srv.target, "rerank", reqs, clients,
                                   metrics_url=f"http://127.0.0.1:{srv.metrics_port}/metrics")
                    served = r["items"] / r["seconds"]
                    runs[label].append({"served": served, **base, **_pass_stats(r), "latencies": r["latencies"]})
            for label, v in runs.items():
                lat = sorted(x for w in v for x in w["latencies"])
                rows.append({"workload": wl, "clients": clients, "server": label,
                             "served_pairs_per_s": statistics.median(w["served"] for w in v),
                             "raw_best_pairs_per_s": statistics.median(w["best"] for w in v),
                             "raw_sorted_pairs_per_s": statistics.median(w["sorted"] for w in v),
                             "ratio_vs_raw_best": statistics.median(w["served"] / w["best"] for w in v),
                             "ratio_vs_raw_sorted": statistics.median(w["served"] / w["sorted"] for w in v),
                             "ratios_vs_raw_best": [w["served"] / w["best"] for w in v],
                             "mean_pass": statistics.median(w["mean_pass"] for w in v),
                             "padded_tokens_per_pair": statistics.median(w["padded_tokens_per_pair"] for w in v),
                             "compute_busy": statistics.median(w["compute_busy"] for w in v),
                             "p50_s": lat[len(lat) // 2] if lat else float("nan")})
            gains[wl] = {label: statistics.median(x["served"] / y["served"] for x, y in zip(runs["default"], v))
                         for label, v in runs.items() if label != "default"}
    finally:
        for s in servers.values():
            s.terminate()
    bench.report["scenarios"]["14_length_split"] = {"precision": f"{raw.backend} {raw.precision}", "rounds": rounds, "rows": rows,
                                                    "default_vs": gains}


def table(s: dict) -> list[str]:
    if "14_length_split" not in s:
        return []
    x = s["14_length_split"]
    out = [f"### 14. Tiny requests and length split ({x['precision']}; servers take turns, {x['rounds']} rounds; "
           "each window paired with raw throughput measured just before it)", "",
           "| workload | clients | server | served pairs/s | raw best pairs/s | served / raw best | raw sorted pairs/s | "
           "served / raw sorted | pairs per pass | padded tokens per pair | compute thread busy | p50 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['workload']} | {r['clients']} | {r['server']} | {r['served_pairs_per_s']:.1f} | "
            f"{r['raw_best_pairs_per_s']:.1f} | **{r['ratio_vs_raw_best']:.2f}x** | {r['raw_sorted_pairs_per_s']:.1f} | "
            f"{r['ratio_vs_raw_sorted']:.2f}x | {r['mean_pass']:.1f} | {r['padded_tokens_per_pair']:.1f} | "
            f"{r['compute_busy']:.0%} | {r['p50_s'] * 1000:.0f} ms |" for r in x["rows"]]
    out += ["", "The default against each other server, served pairs/s in the same round (median of the paired "
            "ratios):", ""]
    out += [f"- {wl}: " + ", ".join(f"vs {label} **{g:.2f}x**" for label, g in by.items())
            for wl, by in x["default_vs"].items()]
    out.append("")
    return out
