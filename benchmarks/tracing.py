"""What tracing costs: served Rerank throughput at 32 clients x 1 title with every call traced (full sampling,
exported by OTLP) against calls that are not, on one server; with tracing off, what is left on a call's path.

    python -m benchmarks.tracing [--windows 6] [--seconds 10] [--lifetimes 2] [--model minilm|tiny]

Paired, the claim. One server with tracing on, exporting by OTLP/gRPC to a real receiver in this process (which
parses every span it is sent, on these same cores). Every call carries a fresh W3C traceparent: sampled in the B
windows, so each call records and exports its spans (the RPC, validate, rerank, queue, compute) and its batch's;
not sampled in the A windows, so the server records nothing. The windows take turns in ABBA order, each a fresh
load-generator process; the ratio is median B over median A. On 2 cores a server's lifetime sets its speed by
+-25% (benchmarks/auth.py), so only windows of one lifetime resolve 5%. A third kind of window samples a tenth of
the calls, as a caller sampling by ratio does.

Where a traced call's time goes, in-process: the server span (the caller's context extracted, the SDK's sampler and
span), each child span, and the OTLP encoding of one span, which the exporter's thread does on the same cores.

Lifetimes, for context: a server without tracing and one with it at full sampling, one alive at a time, ABBA,
reported with their spread.

Off, in-process: what a call's path still runs for tracing when it is off (the checks in the transports, the
engine's stages and the batcher), timed, and its share of the off server's p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import timeit
from pathlib import Path

from benchmarks.peers import cpu_model, load, workloads
from tests.support.checkpoints import minilm_cross_encoder, tiny_cross_encoder
from tests.support.otlp import GrpcReceiver
from tests.support.serverproc import REPO, ServerProcess

CLIENTS = 32


KINDS = {"unsampled": ("unsampled", 1.0), "sampled": ("sampled", 1.0), "tenth": ("sampled", 0.1)}


def _window(target: str, requests: list, seconds: float, work: Path, kind: str) -> dict:
    import random
    import subprocess
    import sys

    wl = work / f"wl-{random.random():.8f}.json"
    wl.write_text(json.dumps({"rpc": "rerank", "requests": requests}))
    out = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", target, str(wl), "--concurrency", str(CLIENTS),
                          "--seconds", str(seconds), "--warmup", "3", "--traceparent", KINDS[kind][0],
                          "--sampled-share", str(KINDS[kind][1])], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    return {"items_per_s": r["items"] / r["seconds"], "p50_ms": 1e3 * statistics.median(r["latencies"] or [0]),
            "errors": r["errors"], "answered": r["answered"]}


def paired(model: str, requests: list, windows: int, seconds: float, work: Path) -> dict:
    rx = GrpcReceiver(keep=False)
    s = ServerProcess(work / "paired", "--reranker", f"ce={model}", "--metrics-port", "-1", "--otlp-endpoint",
                      rx.endpoint, "--milvus-uri", str(work / "paired.db"))
    s.start()
    runs = {k: [] for k in KINDS}
    spans = {k: 0 for k in KINDS}
    try:
        for i in range(windows):
            for kind in (list(KINDS) if i % 2 == 0 else list(KINDS)[::-1]):
                before = rx.received
                runs[kind].append(_window(s.target, requests, seconds, work, kind))
                time.sleep(5.5)  # the window's last spans leave at the processor's next 5 s tick
                spans[kind] += rx.received - before
    finally:
        s.terminate()
        rx.stop()
    a = statistics.median(r["items_per_s"] for r in runs["unsampled"])
    b = statistics.median(r["items_per_s"] for r in runs["sampled"])
    c = statistics.median(r["items_per_s"] for r in runs["tenth"])
    traced = sum(r["answered"] for r in runs["sampled"])
    return {"items_per_s_unsampled": round(a, 1), "items_per_s_traced": round(b, 1), "ratio": round(b / a, 4),
            # A caller that samples a tenth of its calls (parentbased_traceidratio 0.1 upstream).
            "items_per_s_tenth_traced": round(c, 1), "ratio_tenth_traced": round(c / a, 4),
            "p50_ms_unsampled": round(statistics.median(r["p50_ms"] for r in runs["unsampled"]), 3),
            "p50_ms_traced": round(statistics.median(r["p50_ms"] for r in runs["sampled"]), 3),
            "windows": {k: [round(r["items_per_s"], 1) for r in v] for k, v in runs.items()},
            "errors": {k: [r["errors"] for r in v if r["errors"]] for k, v in runs.items()},
            # Spans that reached the receiver per traced call (the batch spans shared among calls included); those
            # of the untraced windows show that a call not sampled exports nothing.
            "spans_per_traced_call": round(spans["sampled"] / max(1, traced), 2),
            "spans_in_untraced_windows": spans["unsampled"],
            "spans_per_call_tenth": round(spans["tenth"] / max(1, sum(r["answered"] for r in runs["tenth"])), 3),
            "receiver_requests": rx.requests}


def lifetimes(model: str, requests: list, n: int, seconds: float, work: Path) -> dict:
    rx = GrpcReceiver(keep=False)
    flags = ("--reranker", f"ce={model}", "--metrics-port", "-1")
    kinds = {"off": flags, "on": (*flags, "--otlp-endpoint", rx.endpoint)}
    out = {"off": [], "on": []}
    try:
        for i in range(n):
            for kind in (("off", "on") if i % 2 == 0 else ("on", "off")):
                k = len(out["off"]) + len(out["on"])
                s = ServerProcess(work / f"life{k}", *kinds[kind], "--milvus-uri", str(work / f"life{k}.db"))
                s.start()
                try:
                    out[kind].append(load(s.target, requests, CLIENTS, seconds, work))
                finally:
                    s.terminate()
    finally:
        rx.stop()
    off = statistics.median(r["items_per_s"] for r in out["off"])
    on = statistics.median(r["items_per_s"] for r in out["on"])
    return {"items_per_s_off": round(off, 1), "items_per_s_on": round(on, 1), "ratio": round(on / off, 4),
            "p50_ms_off": round(statistics.median(r["p50_ms"] for r in out["off"]), 3),
            "lifetimes": {k: [round(r["items_per_s"], 1) for r in v] for k, v in out.items()}}


def off_path_us() -> float:
    """Microseconds a Rerank call spends on tracing when it is off: the transport's check, two engine stages, the
    batcher's test at submit and its look for traced requests in a batch (of one)."""
    from tandem.server import tracing
    from tandem.workers import tracing as batch_tracing
    from tandem.workers.queue import Entry

    assert not tracing.ON
    entry = Entry(("q", "d"), 8, None, None, 0.0)

    class Backend:
        name = kind = "reranker"

    backend = Backend()

    def one():
        if tracing.ON:
            raise AssertionError
        with tracing.stage("validate"):
            pass
        with tracing.stage("rerank") as span:
            span.is_recording()
        batch_tracing.request_context()
        batch_tracing.open_batch("b", backend, [entry], 1, 0.0)

    async def timed():  # inside a running loop and task, as on the server
        n = 50000
        return min(timeit.repeat(one, number=n, repeat=5)) / n * 1e6

    return round(asyncio.run(timed()), 3)


def traced_costs_us() -> dict:
    """Microseconds, in-process, of what one traced Rerank call makes: its server span, one child span (of its four:
    validate, rerank, queue, compute), and the OTLP encoding of one of its spans."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from tandem.server import tracing
    from tandem.workers import tracing as work_spans

    kept = []

    class Keep(SpanProcessor):
        def on_end(self, span):
            kept.append(span)

    provider = TracerProvider(resource=Resource.create({"service.name": "tandem"}))
    provider.add_span_processor(Keep())
    tracing._tracer, tracing.ON = provider.get_tracer("tandem"), True
    work_spans.install(Keep().on_end, provider.resource, InstrumentationScope("tandem"))
    md = [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    n = 5000
    try:
        def server_span():
            tracing.close_rpc(tracing.open_rpc("/tandem.v1.RerankService/Rerank", md, "ipv4:127.0.0.1:5555"), "OK")

        def child():
            with tracing.stage("rerank", {"tandem.model": "ce", "tandem.documents": 1, "tandem.top_n": 0}) as s:
                s.set_attributes({"tandem.pairs": 1, "tandem.tokens": 24})

        async def timed():
            out = {"server_span_us": min(timeit.repeat(server_span, number=n, repeat=3)) / n * 1e6}
            opened = tracing.open_rpc("/tandem.v1.RerankService/Rerank", md, "ipv4:127.0.0.1:5555")
            out["child_span_us"] = min(timeit.repeat(child, number=n, repeat=3)) / n * 1e6
            tracing.close_rpc(opened, "OK")
            return out

        out = asyncio.run(timed())
        spans = kept[-512:]
        out["encode_us_per_span"] = min(timeit.repeat(lambda: encode_spans(spans).SerializeToString(), number=5,
                                                      repeat=3)) / 5 / len(spans) * 1e6
    finally:
        tracing.ON = False
        work_spans.uninstall()
    out = {k: round(v, 2) for k, v in out.items()}
    out["per_traced_call_us"] = round(out["server_span_us"] + 4 * out["child_span_us"] +
                                      5 * out["encode_us_per_span"], 1)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=6, help="window pairs on the paired server")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--lifetimes", type=int, default=2, help="server lifetimes of each kind (0 skips them)")
    p.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "tracing.json")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tandem-bench-tracing-"))
    model = (minilm_cross_encoder if args.model == "minilm" else tiny_cross_encoder)(work / "ce")
    requests, clients = workloads()["titles"]
    assert clients == CLIENTS
    report = {"cpu": cpu_model(), "model": args.model, "clients": CLIENTS, "documents_per_call": 1,
              "seconds_per_window": args.seconds,
              "paired": paired(model, requests, args.windows, args.seconds, work)}
    if args.lifetimes:
        report["lifetimes"] = lifetimes(model, requests, args.lifetimes, args.seconds, work)
    report["off_path_us_per_call"] = off_path_us()
    report["traced_costs"] = traced_costs_us()
    # The machine time a call takes at the untraced rate (2 cores), against what tracing adds to it.
    report["traced_costs"]["share_of_call_machine_time"] = round(
        report["traced_costs"]["per_traced_call_us"] / (2e6 / report["paired"]["items_per_s_unsampled"]), 4)
    if "lifetimes" in report:
        report["off_path_share_of_p50"] = round(report["off_path_us_per_call"] / 1e3 /
                                                report["lifetimes"]["p50_ms_off"], 6)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
