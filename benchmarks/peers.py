"""Tandem against Infinity on this CPU: same model, same pairs, servers taking turns, idle and beside a co-runner.

    python -m venv /opt/infinity && /opt/infinity/bin/pip install torch==2.13.0 \\
        'infinity-emb[server,optimum,torch]==0.0.78'          # once, in its own venv (it pins transformers < 4.58)
    .venv/bin/python -m benchmarks.peers --infinity-venv /opt/infinity [--rounds 2] [--seconds 10]

Installs nothing. The model is the MiniLM-L6-shaped test cross-encoder (the bundled encoder with a seeded head:
cost figures only, no ranking claim). For Infinity's ONNX Runtime engine the script exports it with the venv's
own `optimum-cli` (fp32 `model.onnx`, and `model_quantized.onnx` by `optimum-cli onnxruntime quantize
--avx512_vnni`, which Infinity prefers on a CPU) and puts both at the model folder's root, where Infinity looks.

Servers (one at a time: Infinity's idle threads poll, so two alive at once would skew both):
  infinity torch fp32, infinity torch bf16 (--dtype bfloat16, when the CPU has native bf16), infinity optimum
  int8 (its CPU default), infinity optimum fp32, tandem default (backend and precision auto: the fastest that
  passes the gate), tandem --precision bf16 (the fastest backend at bf16) and each bf16 backend by name (when
  the CPU has it), and tandem --precision int8 (the fastest backend at that precision; not gated, asked for).
  `--only` picks some of them by label.
Workloads: 16 clients x 20 passages (Cranfield query, 60-word abstract), 32 clients x 1 title, and the p50 of a
one-document call at one client; each idle and beside a process that spins on one core (pinned to the last).
Agreement: each server's raw scores for 20 queries x 20 passages against fp32 torch in-process: the median
per-query Spearman and the share of queries with the same top passage.
Tandem is driven over gRPC, Infinity over HTTP (/rerank), both from the same separate load-generator process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from tests.support.checkpoints import minilm_cross_encoder
from tests.support.serverproc import REPO, ServerProcess, free_port

DATA = REPO / "datasets" / "cranfield"
SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass\n"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _corpus():
    rows = [r for r in map(json.loads, (DATA / "corpus.jsonl").read_text().splitlines()) if r["text"].strip()]
    queries = [json.loads(x)["text"] for x in (DATA / "queries.jsonl").read_text().splitlines()]
    return rows, queries


def workloads(seed: int = 0) -> dict:
    rows, queries = _corpus()
    rng = random.Random(seed)
    passages = [" ".join(r["text"].split()[:60]) for r in rows]
    titles = [r["title"] for r in rows if r["title"].strip()]
    return {
        "passages": ([{"query": rng.choice(queries), "documents": rng.sample(passages, 20)} for _ in range(64)], 16),
        "titles": ([{"query": rng.choice(queries), "documents": [rng.choice(titles)]} for _ in range(256)], 32),
        "one": ([{"query": rng.choice(queries), "documents": [rng.choice(passages)]} for _ in range(64)], 1),
    }


def infinity_model(ce: str, venv: Path, out: Path) -> Path:
    """The cross-encoder folder with model.onnx and model_quantized.onnx at its root, made by the venv's optimum."""
    if (out / "model_quantized.onnx").exists():
        return out
    cli = str(venv / "bin" / "optimum-cli")
    shutil.copytree(ce, out, dirs_exist_ok=True)  # the torch engine reads the weights from the same folder
    subprocess.run([cli, "export", "onnx", "--model", ce, "--task", "text-classification", "--library-name",
                    "transformers", str(out / "fp32")], check=True, capture_output=True)
    subprocess.run([cli, "onnxruntime", "quantize", "--onnx_model", str(out / "fp32"), "--avx512_vnni", "-o",
                    str(out / "q")], check=True, capture_output=True)
    shutil.move(str(out / "fp32" / "model.onnx"), out / "model.onnx")
    shutil.move(str(out / "q" / "model_quantized.onnx"), out / "model_quantized.onnx")
    shutil.rmtree(out / "q")
    shutil.rmtree(out / "fp32")
    return out


class Infinity:
    def __init__(self, venv: Path, model: Path, workdir: Path, *args: str):
        self.venv, self.model, self.args = venv, model, args
        self.port = free_port()
        self.log = workdir / f"infinity-{self.port}.log"
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600) -> "Infinity":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
               "DO_NOT_TRACK": "1", "HF_HOME": str(self.log.parent / "hf")}
        # Run from inside the model folder with `--model-id .`: Infinity 0.0.78 hands optimum the ONNX file's path
        # as globbed from the model id, and optimum wants it relative to the folder.
        self.proc = subprocess.Popen([str(self.venv / "bin" / "infinity_emb"), "v2", "--model-id", ".",
                                      "--served-model-name", "ce", "--device", "cpu", "--port", str(self.port),
                                      "--host", "127.0.0.1", *self.args], cwd=self.model,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity exited:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return self
            except OSError:
                time.sleep(1)
        raise TimeoutError(self.log.read_text()[-3000:])

    def scores(self, query: str, docs: list[str]) -> list[float]:
        body = json.dumps({"model": "ce", "query": query, "documents": docs, "raw_scores": True,
                           "return_documents": False}).encode()
        req = urllib.request.Request(self.url + "/rerank", body, {"Content-Type": "application/json"})
        out = json.loads(urllib.request.urlopen(req, timeout=300).read())["results"]
        s = [0.0] * len(docs)
        for r in out:
            s[r["index"]] = r["relevance_score"]
        return s

    def target(self) -> str:
        return self.url + "/rerank"

    def body(self, req: dict) -> dict:
        return {"model": "ce", **req}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Tandem:
    def __init__(self, ce: str, workdir: Path, cache: Path, *args: str, http: bool = False):
        self.ce, self.workdir, self.args = ce, workdir, args
        self.cache = cache
        self.http = http  # load over HTTP (Cohere v2 bodies to /v2/rerank), as Infinity is loaded
        self.srv = None

    def start(self) -> "Tandem":
        d = Path(tempfile.mkdtemp(dir=self.workdir, prefix="tandem-"))
        self.srv = ServerProcess(d, "--reranker", self.ce, "--milvus-uri", str(d / "m.db"), "--cache-dir",
                                 str(self.cache), *self.args).start(timeout=900)
        return self

    def scores(self, query: str, docs: list[str]) -> list[float]:
        from tandem.v1 import rerank_pb2, rerank_pb2_grpc

        with self.srv.channel() as ch:
            r = rerank_pb2_grpc.RerankServiceStub(ch).Rerank(
                rerank_pb2.RerankRequest(query=query, documents=docs, raw_scores=True), timeout=300)
        s = [0.0] * len(docs)
        for x in r.results:
            s[x.index] = x.relevance_score
        return s

    def target(self) -> str:
        return f"{self.srv.http_url}/v2/rerank" if self.http else self.srv.target

    def body(self, req: dict) -> dict:
        return req

    def chosen(self) -> str:
        from tandem.v1 import info_pb2, info_pb2_grpc

        with self.srv.channel() as ch:
            info = info_pb2_grpc.InfoServiceStub(ch).Info(info_pb2.InfoRequest(), timeout=10)
        m = next(m for m in info.models if m.kind == "reranker")
        return f"{m.backend} {m.precision}"

    def stop(self) -> None:
        self.srv.terminate()


def load(target: str, requests: list, clients: int, seconds: float, tmp: Path) -> dict:
    wl = tmp / f"wl-{random.random():.8f}.json"
    wl.write_text(json.dumps({"rpc": "rerank", "requests": requests}))
    out = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", target, str(wl), "--concurrency", str(clients),
                          "--seconds", str(seconds), "--warmup", "3"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    r = json.loads(out)
    return {"items_per_s": r["items"] / r["seconds"], "p50_ms": 1e3 * statistics.median(r["latencies"] or [0]),
            "errors": r["errors"]}


def raw_rates(backend, work: dict) -> dict:
    """In-process items/s of `backend.run` at its best batch (8, 16 or 32) on each workload's pairs."""
    out = {}
    for name in ("passages", "titles"):
        pairs = [(r["query"], d) for r in work[name][0] for d in r["documents"]][:512]
        backend.run(pairs[:32])
        best = 0.0
        for bs in (8, 16, 32):
            t = time.perf_counter()
            for i in range(0, len(pairs), bs):
                backend.run(pairs[i:i + bs])
            best = max(best, len(pairs) / (time.perf_counter() - t))
        out[name] = best
    return out


def agreement(server, reference) -> tuple[float, float]:
    from scipy.stats import spearmanr

    rhos, same = [], []
    for (q, docs), ref in reference:
        got = server.scores(q, docs)
        rhos.append(spearmanr(ref, got).statistic)
        same.append(int(np.argmax(ref)) == int(np.argmax(got)))
    return float(statistics.median(rhos)), float(np.mean(same))


def reference_scores(ce: str, n: int = 20) -> list:
    import torch
    from sentence_transformers import CrossEncoder

    rows, queries = _corpus()
    rng = random.Random(5)
    groups = [(rng.choice(queries), [" ".join(r["text"].split()[:60]) for r in rng.sample(rows, 20)])
              for _ in range(n)]
    model = CrossEncoder(ce, device="cpu")
    return [((q, d), model.predict([(q, x) for x in d], activation_fn=torch.nn.Identity()).tolist())
            for q, d in groups]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--infinity-venv", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--only", default="", help="comma-separated server labels to run")
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "peers.json")
    args = p.parse_args(argv)
    from tandem.server.precision import cpu_bf16_flag

    tmp = Path(tempfile.mkdtemp(prefix="tandem-peers-"))
    ce = minilm_cross_encoder(tmp / "ce")
    inf_model = infinity_model(ce, args.infinity_venv, tmp / "ce-onnx")
    cache = tmp / "tandem-cache"
    servers = {
        "infinity torch fp32": lambda: Infinity(args.infinity_venv, inf_model, tmp, "--engine", "torch"),
        **({"infinity torch bf16": lambda: Infinity(args.infinity_venv, inf_model, tmp, "--engine", "torch",
                                                    "--dtype", "bfloat16")} if cpu_bf16_flag() else {}),
        "infinity optimum int8": lambda: Infinity(args.infinity_venv, inf_model, tmp, "--engine", "optimum"),
        "infinity optimum fp32": lambda: Infinity(args.infinity_venv, inf_model, tmp, "--engine", "optimum",
                                                  "--onnx-do-not-prefer-quantized"),
        "tandem default": lambda: Tandem(ce, tmp, cache),
        "tandem default http": lambda: Tandem(ce, tmp, cache, http=True),
        **({"tandem bf16": lambda: Tandem(ce, tmp, cache, "--precision", "bf16"),
            "tandem torch bf16": lambda: Tandem(ce, tmp, cache, "--backend", "torch", "--precision", "bf16"),
            "tandem openvino bf16": lambda: Tandem(ce, tmp, cache, "--backend", "openvino", "--precision", "bf16")}
           if cpu_bf16_flag() else {}),
        "tandem int8": lambda: Tandem(ce, tmp, cache, "--precision", "int8"),
        "tandem int8 http": lambda: Tandem(ce, tmp, cache, "--precision", "int8", http=True),
    }
    if args.only:
        servers = {k: v for k, v in servers.items() if k in args.only.split(",")}
    work = workloads()
    reference = reference_scores(ce)
    results: dict = {label: {"windows": []} for label in servers}
    raw: dict = {"idle": [], "co-runner": []}
    for _ in range(args.rounds):
        if "tandem default" in servers:  # the default's backend in-process, between servers (none is running)
            from tandem.server.models import load_reranker

            backend = load_reranker(ce, "cpu", False, cache_dir=str(cache))
            for load_name in raw:
                spin = (subprocess.Popen([sys.executable, "-c", SPIN, str(os.cpu_count() - 1)])
                        if load_name == "co-runner" else None)
                try:
                    raw[load_name].append(raw_rates(backend, work))
                finally:
                    if spin:
                        spin.kill()
                        spin.wait()
            del backend
        for label, make in servers.items():
            srv = make().start()
            try:
                res = results[label]
                if "spearman" not in res:
                    res["spearman"], res["same_top"] = agreement(srv, reference)
                    res["setting"] = srv.chosen() if isinstance(srv, Tandem) else label.split(" ", 1)[1]
                w = {}
                for load_name in ("idle", "co-runner"):
                    spin = (subprocess.Popen([sys.executable, "-c", SPIN, str(os.cpu_count() - 1)])
                            if load_name == "co-runner" else None)
                    try:
                        for name, (reqs, clients) in work.items():
                            w[f"{name} {load_name}"] = load(srv.target(), [srv.body(r) for r in reqs], clients,
                                                            args.seconds, tmp)
                    finally:
                        if spin:
                            spin.kill()
                            spin.wait()
                res["windows"].append(w)
            finally:
                srv.stop()
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "rounds": args.rounds, "seconds": args.seconds,
              "servers": {}}
    for label, res in results.items():
        keys = res["windows"][0].keys()
        med = {k: {m: statistics.median(w[k][m] for w in res["windows"]) for m in ("items_per_s", "p50_ms")}
               for k in keys}
        report["servers"][label] = {"setting": res["setting"], "spearman": res["spearman"],
                                    "same_top": res["same_top"], **med}
    if raw["idle"]:
        report["raw default"] = {k: {w: statistics.median(r[w] for r in v) for w in ("passages", "titles")}
                                 for k, v in raw.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(table(report))
    return report


def table(rep: dict) -> str:
    lines = [f"CPU: {rep['cpu']} ({rep['cores']} cores); medians of {rep['rounds']} rounds, {rep['seconds']} s windows",
             "| server | runs as | 16x20 passages/s idle | co-runner | 32x1 titles/s idle | co-runner | "
             "1-doc p50 ms idle | co-runner | Spearman / same top vs fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, r in rep["servers"].items():
        lines.append(f"| {label} | {r['setting']} | {r['passages idle']['items_per_s']:.1f} | "
                     f"{r['passages co-runner']['items_per_s']:.1f} | {r['titles idle']['items_per_s']:.1f} | "
                     f"{r['titles co-runner']['items_per_s']:.1f} | {r['one idle']['p50_ms']:.1f} | "
                     f"{r['one co-runner']['p50_ms']:.1f} | {r['spearman']:.3f} / {r['same_top']:.2f} |")
    if "raw default" in rep:
        r = rep["raw default"]
        lines.append(f"| tandem default, raw in-process at its best batch | same | {r['idle']['passages']:.1f} | "
                     f"{r['co-runner']['passages']:.1f} | {r['idle']['titles']:.1f} | {r['co-runner']['titles']:.1f} "
                     "| | | |")
    return "\n".join(lines + [""] + targets(rep))


def targets(rep: dict) -> list[str]:
    """Issue 20's ratios, from this run's medians: for Tandem's default over gRPC, and over HTTP (issue 22)."""
    srv = rep["servers"]
    inf = {k: v for k, v in srv.items() if k.startswith("infinity")}
    if not inf:
        return []
    out = []
    for label in ("tandem default", "tandem default http"):
        if label in srv:
            out += _targets(rep, label, inf, {k: v for k, v in srv.items() if k.startswith("tandem")})
    return out


def _targets(rep: dict, label: str, inf: dict, tan: dict) -> list[str]:
    gated = {k: v for k, v in inf.items() if v["spearman"] >= 0.999 and v["same_top"] >= 0.99}
    d = rep["servers"][label]
    out = []
    for w in ("passages", "titles"):
        key = f"{w} idle"
        best_inf = max(inf, key=lambda k: inf[k][key]["items_per_s"])
        best_tan = max(tan, key=lambda k: tan[k][key]["items_per_s"])
        if gated:
            g = max(gated, key=lambda k: gated[k][key]["items_per_s"])
            out.append(f"{w}: {label} / fastest gate-passing Infinity ({g}): "
                       f"{d[key]['items_per_s'] / gated[g][key]['items_per_s']:.2f}x (target >= 1.3x)")
        out.append(f"{w}: fastest tandem ({best_tan}) / fastest Infinity ({best_inf}): "
                   f"{tan[best_tan][key]['items_per_s'] / inf[best_inf][key]['items_per_s']:.2f}x (target >= 1.0x)")
        keep = d[f"{w} co-runner"]["items_per_s"] / d[key]["items_per_s"]
        best_inf_busy = max(inf, key=lambda k: inf[k][f"{w} co-runner"]["items_per_s"])
        out.append(f"{w}: beside a co-runner {label} keeps {keep:.2f}x of idle (target >= 0.45x); "
                   f"vs fastest Infinity there ({best_inf_busy}) "
                   f"{d[f'{w} co-runner']['items_per_s'] / inf[best_inf_busy][f'{w} co-runner']['items_per_s']:.2f}x")
        if "raw default" in rep:
            out.append(f"{w}: {label} served / raw in-process best batch: "
                       f"{d[key]['items_per_s'] / rep['raw default']['idle'][w]:.2f}x (target >= 0.9x)")
    best_p50 = min(inf, key=lambda k: inf[k]["one idle"]["p50_ms"])
    out.append(f"1-document p50 at one client: {label} {d['one idle']['p50_ms']:.1f} ms, "
               f"best Infinity ({best_p50}) {inf[best_p50]['one idle']['p50_ms']:.1f} ms (target <=)")
    return out

if __name__ == "__main__":
    main()
