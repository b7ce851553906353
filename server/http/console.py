"""The console's files (server/console/: one page, its script and style sheet) and the Prometheus text on the
HTTP port, which the console's server page reads.

The files hold no data, so they load without a token: the page asks for one and sends it with every call it
makes, all of them to the contract's Connect routes, which the access gate guards as on gRPC. A strict
Content-Security-Policy keeps the page from loading or sending anything to any other host.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from tandem.server.access import Rule
from tandem.server.errors import Kind
from tandem.server.http import errors
from tandem.server.http.routes import Route

FILES = Path(__file__).resolve().parent.parent / "console"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
PATH = "/console"


class ConsoleRoutes:
    def __init__(self):
        # Read once at start: the files ship with the package and never change while it runs.
        self.files = {f.name: (f.read_bytes(), TYPES[f.suffix]) for f in FILES.iterdir() if f.suffix in TYPES}

    def _file(self, name: str):
        body, kind = self.files[name]

        async def endpoint(request: Request):
            return Response(body, media_type=kind, headers={
                "content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
                "cache-control": "no-cache"})

        return endpoint

    async def metrics(self, request: Request):
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[Route]:
        pages = [Route(PATH, self._file("index.html"), errors.CONNECT, "The console (a web page)", method="GET",
                       static=True, tags=("console",))]
        pages += [Route(f"{PATH}/{name}", self._file(name), errors.CONNECT, f"The console's {name}", method="GET",
                        static=True, tags=("console",)) for name in sorted(self.files) if name != "index.html"]
        return [*pages, Route("/metrics", self.metrics, errors.OPENAI, "Prometheus metrics (as on --metrics-port)",
                              method="GET", rule=Rule(None), tags=("server",), fails=(Kind.INTERNAL,),
                              answers=(CONTENT_TYPE_LATEST.split(";")[0],))]
