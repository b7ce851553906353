"""`tandem serve`: start the server (`python -m tandem.server.cli serve` runs it without the client package's CLI)."""

from __future__ import annotations

import argparse
import logging
import sys

from tandem.server import config


def serve(args) -> int:
    from tandem.server.app import _limit_malloc_arenas, serve as run

    _limit_malloc_arenas()  # before any thread allocates
    try:
        cfg = config.from_sources(args)
    except ValueError as exc:
        print(f"tandem serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config.loop_runner(cfg.event_loop)(run(cfg))
    except Exception as exc:
        from tandem.server.models import ModelNotFound

        if isinstance(exc, (ModelNotFound, ValueError, RuntimeError, OSError)):
            logging.getLogger("tandem").error("startup failed: %s", exc)
            return 2
        raise
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="run the gRPC server", description="Flags override TANDEM_* environment variables.")
    config.add_arguments(s)
    s.set_defaults(fn=serve)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tandem", description=__doc__)
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
