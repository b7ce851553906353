"""The `tandem` command: serve, health, ingest, eval, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from server import config


def _serve(args) -> int:
    from server.app import _limit_malloc_arenas, serve

    _limit_malloc_arenas()  # before any thread allocates
    try:
        cfg = config.from_sources(args)
    except ValueError as exc:
        print(f"tandem serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(cfg))
    except Exception as exc:
        from server.models import ModelNotFound

        if isinstance(exc, (ModelNotFound, ValueError, RuntimeError, OSError)):
            logging.getLogger("tandem").error("startup failed: %s", exc)
            return 2
        raise
    return 0


def _health(args) -> int:
    from server.client import check_health

    status = check_health(args.target, args.service, args.timeout, tls_ca=args.tls_ca, insecure=not args.tls)
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tandem", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gRPC server", description="Flags override TANDEM_* environment variables.")
    config.add_arguments(s)
    s.set_defaults(fn=_serve)

    h = sub.add_parser("health", help="probe the gRPC health service (exit 0 when SERVING)")
    h.add_argument("--target", default="127.0.0.1:50051")
    h.add_argument("--service", default="", help="service name; empty = whole server")
    h.add_argument("--timeout", type=float, default=3.0)
    h.add_argument("--tls", action="store_true", help="connect with TLS")
    h.add_argument("--tls-ca", default="", help="CA bundle for --tls")
    h.set_defaults(fn=_health)

    from server import evaluate, ingest

    ingest.add_parser(sub)
    evaluate.add_parser(sub)
    # `bench` lives in the source checkout (benchmarks/, tests/), not in the installed package; an editable
    # install finds it beside server/.
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "benchmarks" / "run.py").exists():
        if str(checkout) not in sys.path:
            sys.path.append(str(checkout))
        from benchmarks import run as bench

        bench.add_parser(sub)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
