"""The `tandem` command.

  serve         run the server (server/)
  health        probe the gRPC health service
  collections   list collections with their sizes and embedders
  search        search a collection
  rerank        rerank documents given on the command line
  ingest        stream BEIR, JSONL or a folder of .txt/.md files into a collection
  eval          nDCG@10 / MRR@10 / R@100 of a running server on a BEIR folder
  export        a collection with its vectors to a Parquet file
  import        an export file into a collection, without embedding again (resumable)
  backup        every collection of a running server into a folder
  restore       a backup folder into a server
  auth          new-token NAME: a bearer token and the access policy line that accepts it
  bench         the benchmarks (source checkout only)

Client commands take --target, --token, --tls/--tls-ca, --tls-cert/--tls-key and --json (print the response as
JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from google.protobuf import json_format

from tandem.channel import Retry
from tandem.client import Client
from tandem.errors import TandemError


def _client(args) -> Client:
    return Client(args.target, token=args.token or None, tls=args.tls, tls_ca=args.tls_ca or None,
                  tls_cert=args.tls_cert or None, tls_key=args.tls_key or None, timeout=args.timeout, retry=Retry(attempts=args.retries + 1))


def _to_dict(message) -> dict:
    # Zero values stay: a hit at recall_rank 0 or a score of 0.0 is an answer, not a missing field.
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _as_json(message) -> str:
    return json.dumps(_to_dict(message), indent=2, ensure_ascii=False)


def _clip(text: str, width: int) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


# -- commands ------------------------------------------------------------------------------------------------------

def _health(args) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    import grpc

    from tandem.channel import auth_metadata, sync_channel

    with sync_channel(args.target, tls=args.tls, tls_ca=args.tls_ca or None) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=args.service),
                                                     timeout=args.timeout, metadata=auth_metadata(args.token))
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        except grpc.RpcError as exc:
            status = f"UNREACHABLE ({exc.code().name}: {exc.details()})"
    print(status)
    return 0 if status == "SERVING" else 1


def _collections(args) -> int:
    with _client(args) as c:
        infos = [c.describe(name) for name in c.collections()]
    if args.json:
        print(json.dumps([_to_dict(i) for i in infos], indent=2))
        return 0
    rows = [[i.collection, str(i.documents), str(i.passages),
             f"{i.chunking.max_tokens}/{i.chunking.overlap_tokens}" if i.chunking.max_tokens else "-",
             i.embedder, str(i.dimension), i.language] for i in infos]
    print(_table(["collection", "documents", "passages", "chunking", "embedder", "dim", "language"], rows)
          if rows else "no collections")
    return 0


def _search(args) -> int:
    from tandem.filters import Filter, parse

    f = None
    if args.filter:
        f = Filter(all=[parse(x) for x in args.filter])
    rerank = False if args.no_rerank else (args.reranker or None)
    with _client(args) as c:
        hits = c.search(args.collection, args.query, top_n=args.top_n, mode=args.mode, filter=f, rerank=rerank,
                        recall_k=args.recall_k, rerank_depth=args.rerank_depth,
                        max_tokens_per_doc=args.max_tokens_per_doc)
    if args.json:
        print(_as_json(hits.response))
        return 0
    rows = [[str(i + 1), h.id, f"{h.score:.4f}", _clip(h.passage or h.text, args.width)] for i, h in enumerate(hits)]
    print(_table(["#", "id", "score", "text"], rows) if rows else "no hits")
    t = hits.timings
    how = "reranked" if hits.reranked else "recall order" + (f" ({hits.degraded_reason})" if hits.degraded_reason
                                                             else "")
    print(f"\n{len(hits)} hits, {how}; {t.total_seconds * 1000:.0f} ms (embed {t.embed_seconds * 1000:.0f}, "
          f"recall {t.recall_seconds * 1000:.0f}, rerank {t.rerank_seconds * 1000:.0f})")
    return 0


def _rerank(args) -> int:
    with _client(args) as c:
        results = c.rerank(args.query, args.documents, top_n=args.top_n, model=args.model, chunk=args.chunk)
    if args.json:
        print(_as_json(results.response))
        return 0
    rows = [[str(i + 1), str(r.index), f"{r.score:.4f}", _clip(args.documents[r.index], args.width)]
            for i, r in enumerate(results)]
    print(_table(["#", "doc", "score", "text"], rows))
    print(f"\nmodel {results.model}; {results.usage.pairs} pairs, {results.usage.total_seconds * 1000:.0f} ms")
    return 0


def _ingest(args) -> int:
    from tandem.ingest import ingest, print_report

    with _client(args) as c:
        r = ingest(c, args.collection, Path(args.source), batch=args.batch, language=args.language,
                   chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap, progress=not args.json)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print_report(r)
    return 0


def _eval(args) -> int:
    from tandem.evaluate import evaluate, table

    with _client(args) as c:
        report = evaluate(c, Path(args.dataset), collection=args.collection, baseline=args.baseline,
                          modes=tuple(args.modes.split(",")), concurrency=args.concurrency, language=args.language,
                          rerank=not args.no_rerank)
    print(json.dumps(report, indent=2) if args.json else table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def _report(args, report) -> None:
    if args.json:
        print(json.dumps(report, indent=2))


def _export(args) -> int:
    from tandem.transfer import export_collection

    with _client(args) as c:
        r = export_collection(c, args.collection, args.output, page_size=args.page_size, progress=not args.json)
    _report(args, r)
    if not args.json:
        print(f"exported {r['rows']} rows of {args.collection!r} ({r['documents']} documents, embedder "
              f"{r['embedder']}) to {r['file']}: {r['bytes'] / 1e6:.1f} MB in {r['seconds']:.1f} s")
    return 0


def _chunking(args) -> tuple[int, int] | None:
    if args.no_chunking:
        return (0, 0)
    return (args.chunk_tokens, args.chunk_overlap) if args.chunk_tokens else None


def _import(args) -> int:
    from tandem.transfer import import_file

    say = (lambda *a: None) if args.json else (lambda line: print(line, file=sys.stderr))
    with _client(args) as c:
        r = import_file(c, args.file, collection=args.collection, into_existing=args.into_existing,
                        re_embed=args.re_embed, embedder=args.embedder, language=args.language,
                        chunking=_chunking(args), segment_rows=args.segment_rows, progress=not args.json, say=say)
    _report(args, r)
    if not args.json:
        how = "embedded again" if r["re_embedded"] else "with their vectors, no embedding"
        print(f"imported {r['rows']} rows ({r['documents']} documents) into {r['collection']!r} {how}, "
              f"in {r['seconds']:.1f} s")
    return 0


def _backup(args) -> int:
    from tandem.transfer import backup

    say = (lambda *a: None) if args.json else print
    with _client(args) as c:
        m = backup(c, args.directory, progress=not args.json, say=say)
    _report(args, m)
    if not args.json:
        print(f"backed up {len(m['collections'])} collections to {args.directory}")
    return 0


def _restore(args) -> int:
    from tandem.transfer import restore

    say = (lambda *a: None) if args.json else print
    with _client(args) as c:
        out = restore(c, args.directory, into_existing=args.into_existing, re_embed=args.re_embed,
                      progress=not args.json, say=say)
    _report(args, out)
    if not args.json:
        print(f"restored {len(out)} collections from {args.directory}")
    return 0


def _new_token(args) -> int:
    from tandem.server.access.policy import NAME
    from tandem.server.access.tokens import digest, new_token

    if not NAME.fullmatch(args.name):
        raise ValueError(f"principal name {args.name!r}: use letters, digits, '.', '_' and '-' (up to 64)")
    token = new_token()
    print(f"token for {args.name} (shown once; store it as a secret, it is not kept anywhere):\n{token}\n")
    print("add to the access policy (only the digest goes there), then grant scopes:\n")
    key = f'"{args.name}"' if "." in args.name else args.name  # a bare dotted key would nest tables
    print(f"[principals.{key}]\ntokens = [\"{digest(token)}\"]\nread = [\"*\"]")
    return 0


# -- parser --------------------------------------------------------------------------------------------------------

def _client_flags(p, timeout: float = 60.0) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="server address (default 127.0.0.1:50051)")
    p.add_argument("--token", default="", help="bearer token, when the server requires one")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
    p.add_argument("--tls-ca", default="", help="CA bundle that signed the server's certificate; implies --tls")
    p.add_argument("--tls-cert", default="", help="client certificate (PEM) for a server that requires mTLS")
    p.add_argument("--tls-key", default="", help="the client certificate's private key (PEM)")
    p.add_argument("--timeout", type=float, default=timeout, help=f"deadline per call in seconds ({timeout:g})")
    p.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE (and overload, where safe) (3)")
    p.add_argument("--json", action="store_true", help="print the response as JSON")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tandem", description="Tandem: two-stage retrieval (recall, then rerank). "
                                "Client commands take --target, --token, --tls/--tls-ca, --tls-cert/--tls-key "
                                "and --json.")
    from importlib.metadata import PackageNotFoundError, version

    try:
        p.add_argument("--version", action="version", version=f"tandem {version('tandem-search')}")
    except PackageNotFoundError:  # a source tree that was never installed
        pass
    sub = p.add_subparsers(dest="command", required=True)

    # Listed for help only: main() runs them before this parser, loading their code only then.
    sub.add_parser("serve", help="run the server (tandem serve --help lists its flags)", add_help=False)
    sub.add_parser("bench", help="served vs raw-model benchmarks, from a source checkout (tandem bench --help)",
                   add_help=False)

    h = sub.add_parser("health", help="probe the gRPC health service (exit 0 when SERVING)")
    h.add_argument("--service", default="", help="service name; empty = whole server")
    _client_flags(h, timeout=3.0)
    h.set_defaults(fn=_health)

    c = sub.add_parser("collections", help="list collections with their sizes and embedders")
    _client_flags(c)
    c.set_defaults(fn=_collections)

    s = sub.add_parser("search", help="search a collection: ids, scores and the start of each text")
    s.add_argument("collection")
    s.add_argument("query")
    s.add_argument("--top-n", type=int, default=10, help="hits to return, best first (10)")
    s.add_argument("--recall-k", type=int, default=0, help="candidates recalled (server default 100)")
    s.add_argument("--rerank-depth", type=int, default=0,
                   help="recall candidates the reranker scores (server default: Info's limits.rerank_depth)")
    s.add_argument("--max-tokens-per-doc", type=int, default=0,
                   help="tokens of each candidate the reranker reads (server default: limits.max_tokens_per_doc)")
    s.add_argument("--mode", choices=["dense", "sparse", "hybrid"], default="dense")
    s.add_argument("--filter", action="append", default=[],
                   help="a metadata condition, repeatable (all must hold): 'year>=1990', 'tag in a,b', "
                        "'tag not_in a,b', 'draft exists'")
    s.add_argument("--reranker", default="", help="reranker to use (default: the server's)")
    s.add_argument("--no-rerank", action="store_true", help="recall order only")
    s.add_argument("--width", type=int, default=70, help="characters of text shown per hit")
    _client_flags(s)
    s.set_defaults(fn=_search)

    r = sub.add_parser("rerank", help="rerank documents given as arguments")
    r.add_argument("query")
    r.add_argument("documents", nargs="+", metavar="DOC")
    r.add_argument("--top-n", type=int, default=0, help="results to return, best first (0 = all)")
    r.add_argument("--model", default="", help="reranker to use (default: the server's)")
    r.add_argument("--chunk", action="store_true", help="score long documents by their best window")
    r.add_argument("--width", type=int, default=70, help="characters of text shown per result")
    _client_flags(r)
    r.set_defaults(fn=_rerank)

    i = sub.add_parser("ingest", help="stream a corpus into a collection (created when missing)")
    i.add_argument("source", help="BEIR corpus.jsonl or folder, plain JSONL ({id, text, metadata}), or a folder "
                                  "of .txt/.md files")
    i.add_argument("--collection", required=True)
    i.add_argument("--batch", type=int, default=64, help="documents per stream message")
    i.add_argument("--language", default="", help="BM25 analyzer of a new collection (default english)")
    i.add_argument("--chunk-tokens", type=int, default=0,
                   help="create a chunked collection: passages of at most N embedder tokens")
    i.add_argument("--chunk-overlap", type=int, default=0, help="tokens each passage overlaps the previous by")
    _client_flags(i)
    i.set_defaults(fn=_ingest)

    e = sub.add_parser("eval", help="nDCG@10 / MRR@10 / R@100 of a running server on a BEIR folder")
    e.add_argument("dataset", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv")
    e.add_argument("--collection", default="", help="collection to use (default eval_<folder name>)")
    e.add_argument("--modes", default="dense,hybrid,sparse")
    e.add_argument("--baseline", action="store_true", help="also run the embedder in-process (exact search)")
    e.add_argument("--concurrency", type=int, default=16)
    e.add_argument("--language", default="", help="BM25 analyzer when the collection is created (default english)")
    e.add_argument("--no-rerank", action="store_true", help="recall runs only")
    e.add_argument("--out", default="", help="also write the report (JSON) here")
    _client_flags(e, timeout=600.0)
    e.set_defaults(fn=_eval)

    x = sub.add_parser("export", help="write a collection, vectors included, to a Parquet file")
    x.add_argument("collection")
    x.add_argument("-o", "--output", required=True, help="the file to write (FILE.partial until complete)")
    x.add_argument("--page-size", type=int, default=1024, help="rows per stream message (1024)")
    _client_flags(x, timeout=24 * 3600.0)
    x.set_defaults(fn=_export)

    m = sub.add_parser("import", help="load an export file into a collection without embedding again "
                                      "(run again to resume after an interruption)")
    m.add_argument("file")
    m.add_argument("--collection", default="", help="the collection to create (default: the exported name)")
    m.add_argument("--into-existing", action="store_true",
                   help="write into an existing collection with the same embedder and chunking")
    m.add_argument("--re-embed", action="store_true",
                   help="embed the texts again: when this server lacks the exported embedder, or to re-chunk")
    m.add_argument("--embedder", default="", help="with --re-embed: the embedder to use (default: the server's)")
    m.add_argument("--language", default="", help="BM25 analyzer of the new collection (default: the exported one)")
    m.add_argument("--chunk-tokens", type=int, default=0, help="with --re-embed: chunk into passages of N tokens")
    m.add_argument("--chunk-overlap", type=int, default=0, help="with --chunk-tokens: overlap in tokens")
    m.add_argument("--no-chunking", action="store_true", help="with --re-embed: store whole documents")
    m.add_argument("--segment-rows", type=int, default=8192,
                   help="rows per Import call; progress is saved after each, and a re-run resumes there (8192)")
    _client_flags(m, timeout=24 * 3600.0)
    m.set_defaults(fn=_import)

    b = sub.add_parser("backup", help="export every collection of a running server into a folder")
    b.add_argument("directory")
    _client_flags(b, timeout=24 * 3600.0)
    b.set_defaults(fn=_backup)

    rs = sub.add_parser("restore", help="import every collection of a backup folder")
    rs.add_argument("directory")
    rs.add_argument("--into-existing", action="store_true", help="write into collections that already exist")
    rs.add_argument("--re-embed", action="store_true", help="embed the texts again (another embedder)")
    _client_flags(rs, timeout=24 * 3600.0)
    rs.set_defaults(fn=_restore)

    a = sub.add_parser("auth", help="access control helpers (see the README's access control section)")
    asub = a.add_subparsers(dest="auth_command", required=True)
    t = asub.add_parser("new-token", help="make a random bearer token; print it once, with the policy lines that "
                                          "accept it (only its digest)")
    t.add_argument("name", help="the principal the token is for")
    t.set_defaults(fn=_new_token)

    return p


def _serve(argv: list[str]) -> int:
    from tandem.server import cli as server_cli  # torch, grpc.aio and the models load only for `serve`

    return server_cli.main(["serve", *argv])


def _bench(argv: list[str]) -> int:
    """The benchmarks live in the source checkout (benchmarks/, tests/), not in the installed package: run them
    there as their own process rather than putting the checkout on this one's import path."""
    import subprocess

    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "benchmarks" / "run.py").exists():
        print("tandem bench: the benchmarks ship with the source checkout, not the installed package; run it "
              "from a checkout installed with `make setup`", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks.run", *argv], cwd=checkout)


RUN_FIRST = {"serve": _serve, "bench": _bench}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in RUN_FIRST:
        return RUN_FIRST[argv[0]](argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except TandemError as exc:
        print(f"tandem {args.command}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"tandem {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
