"""A fuzzer on every HTTP route (issue 36): Schemathesis reads the server's own /openapi.json and runs all of its
checks (every status documented for its route, every body in its documented schema or its dialect's error
envelope, schema-valid requests accepted and schema-violating ones refused, auth enforced), with a token of each
scope and without one, on a fixed seed and a random one that the output names. The server must be healthy and
its log free of unhandled errors afterwards.

Below it, what the fuzzer found, kept as plain regression tests.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tandem.server.access.tokens import digest
from tandem.server.http.openapi import NO_NUL, NOT_BLANK
from tests.support.http import call
from tests.support.serverproc import REFERENCE_RERANKER

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "fuzz" / "schemathesis.toml"
TOKENS = {"read": "reader-token", "write": "writer-token", "admin": "admin-token"}
POLICY = f"""
[principals.reader]
tokens = ["{digest(TOKENS['read'])}"]
read = ["*"]

[principals.writer]
tokens = ["{digest(TOKENS['write'])}"]
read = ["*"]
write = ["*"]

[principals.admin]
tokens = ["{digest(TOKENS['admin'])}"]
read = ["*"]
write = ["*"]
admin = ["*"]
"""
# Small limits, so the fuzzer's boundary values (the longest text, the most documents) stay small requests.
LIMITS = ("--max-text-bytes", "2048", "--max-documents-per-request", "16", "--max-recall-k", "64")
EXAMPLES = int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "15"))  # per route and phase


@pytest.fixture(scope="module")
def fuzzed(make_module_server, tiny_ce, tmp_path_factory):
    policy = tmp_path_factory.mktemp("fuzz") / "policy.toml"
    policy.write_text(POLICY)
    s = make_module_server("--reranker", tiny_ce, *REFERENCE_RERANKER, "--warmup", "false", "--auth-policy",
                           str(policy), *LIMITS)
    admin = TOKENS["admin"]
    # The collection the fuzzer's requests name half the time (tests/fuzz/schemathesis.toml), with documents.
    assert call(f"{s.http_url}/tandem.v1.IndexService/CreateCollection", {"collection": "fuzzed"},
                token=admin).status == 200
    docs = [{"id": f"d{i}", "text": t, "metadata": {"year": 1950 + i, "topic": t.split()[0]}}
            for i, t in enumerate(["wing stall at high incidence", "boundary layer transition",
                                   "hypersonic heat transfer", "shock wave interaction"])]
    assert call(f"{s.http_url}/tandem.v1.IndexService/Upsert", {"collection": "fuzzed", "documents": docs},
                token=admin).status == 200
    return s


def _schemathesis(s, seed: int, token: str | None, tmp: Path, codec: str) -> subprocess.CompletedProcess:
    # The document is behind the token too: read once with one, so that the run without a token has it.
    doc = tmp / "openapi.json"
    if not doc.exists():
        doc.write_text(json.dumps(call(f"{s.http_url}/openapi.json", token=TOKENS["read"]).body))
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color", "run",
           str(doc), "--url", s.http_url, "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", str(seed),
           "--workers", "1", "--request-timeout", "60", "--suppress-health-check", "too_slow",
           "--generation-codec", codec, "--report", "junit", "--report-dir", str(tmp)]
    if codec != "ascii":
        # The text limits are in UTF-8 bytes, which JSON Schema cannot say: the document's maxLength is exact for
        # ASCII, so a schema-valid text of other scripts at the longest length is refused. Every other check runs.
        cmd += ["--exclude-checks", "positive_data_acceptance"]
    if token:
        cmd += ["--header", f"Authorization: Bearer {token}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp)


@pytest.mark.parametrize("scope", ["admin", "write", "read", "none"])
def test_schemathesis_finds_nothing_on_any_route(fuzzed, scope, tmp_path):
    token = TOKENS.get(scope)
    seed = random.SystemRandom().randrange(2**31)  # printed, to replay a failure: --seed
    # With every right: a fixed seed with ASCII texts and every check, and the random seed with any text. With
    # fewer or none, where most calls stop at the gate, the random seed with ASCII texts and every check.
    runs = ((7, "ascii"), (seed, "utf-8")) if scope == "admin" else ((seed, "ascii"),)
    for seed, codec in runs:
        print(f"schemathesis seed {seed}, codec {codec} ({scope})")
        out = _schemathesis(fuzzed, seed, token, tmp_path, codec)
        tail = (out.stdout + out.stderr)[-6000:]
        assert out.returncode == 0, f"schemathesis, seed {seed}, codec {codec}, scope {scope}, found:\n{tail}"
        assert "Tested: 20" in out.stdout, tail  # every route in the document
        print(next((line.strip() for line in out.stdout.splitlines() if re.match(r"\s*[0-9,]+ generated", line)),
                   ""))
    # Still healthy, still serving, and nothing unhandled on the way.
    assert httpx.get(f"{fuzzed.http_url}/health", timeout=30).status_code == 200
    r = call(f"{fuzzed.http_url}/v1/rerank", {"query": "stall", "documents": ["wing stall", "heat"]},
             token=TOKENS["read"])
    assert r.status == 200 and len(r.body["results"]) == 2
    log = fuzzed.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-4000:]


# -- what the fuzzer found, as regression tests --------------------------------------------------------------

READ = {"authorization": f"Bearer {TOKENS['read']}"}


def _post(s, path: str, body) -> tuple[int, object]:
    r = call(f"{s.http_url}{path}", body, token=TOKENS["read"])
    return r.status, r.body


def test_the_document_lists_every_error_in_its_routes_envelope(fuzzed):
    doc = call(f"{fuzzed.http_url}/openapi.json", token=TOKENS["read"]).body
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's 422 shape, which no route sends
    envelope = {"/v2/rerank": "CohereError", "/v1/rerank": "CohereError", "/embed": "TeiError",
                "/v1/embeddings": "OpenaiError", "/tandem.v1.SearchService/Search": "ConnectError"}
    for path, name in envelope.items():
        answers = doc["paths"][path]["post"]["responses"]
        for status in ("400", "401", "403", "429", "500", "503"):
            assert answers[status]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}
        assert "retry-after" in answers["429"]["headers"]
        assert doc["paths"][path]["post"]["security"] == [{"bearer": []}]
    # Connect's own statuses: a body the dialect models would answer 415/422 for is a 400 there.
    assert {"413", "415", "422"} & set(doc["paths"]["/tandem.v1.SearchService/Search"]["post"]["responses"]) == set()
    # The Connect bodies come from the contract, with this server's limits.
    rerank = schemas["tandem.v1.RerankRequest"]
    assert rerank["required"] == ["query", "documents"]
    assert rerank["properties"]["documents"]["maxItems"] == 16
    assert schemas["CohereV2Rerank"]["properties"]["query"]["maxLength"] == 2048
    assert doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"] == {"text/plain": {}}
    assert "security" not in doc["paths"]["/health"]["get"]  # --auth-exempt-health, the default


def test_a_method_not_allowed_names_the_ones_that_are(fuzzed):
    r = httpx.request("TRACE", f"{fuzzed.http_url}/v1/rerank", headers=READ, timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "use POST" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, field", [
    ('"AAA"', "the body: expected a JSON object"),  # json_format read any string as an empty message
    ('[1]', "the body: expected a JSON object"),
    ('{"query": "q", "documents": ["d"], "longDocuments": 2.5}', "longDocuments: expected one of"),
    ('{"query": "q", "documents": ["d"], "longDocuments": true}', "longDocuments: expected one of"),
    ('{"query": "q", "documents": ["d"], "longDocuments": "LONG_DOCUMENTS_SOMETIMES"}', "longDocuments"),
    ('{"query": "q", "documents": ["d"], "topN": "+5"}', "topN: expected an integer"),
    ('{"query": "q", "documents": "d"}', "documents: expected an array"),
])
def test_connect_json_refuses_what_proto3_json_does_not_allow(fuzzed, body, field):
    r = httpx.post(f"{fuzzed.http_url}/tandem.v1.RerankService/Rerank", content=body,
                   headers={**READ, "content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text
    assert field in r.json()["message"], r.text


def test_connect_json_reads_what_proto3_json_allows(fuzzed):
    """Integers as strings, 3.0 as 3, the .proto field names beside the JSON names, enum numbers, null as unset."""
    body = {"query": "stall", "documents": ["wing stall", "heat", "shock"], "top_n": "2", "longDocuments": 0,
            "rawScores": None, "maxTokensPerDoc": 64.0}
    r = httpx.post(f"{fuzzed.http_url}/tandem.v1.RerankService/Rerank", content=json.dumps(body),
                   headers={**READ, "content-type": "application/json"}, timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 2, r.text


@pytest.mark.parametrize("path, body, field", [
    ("/embed", {"inputs": "x", "truncate": 0}, "truncate"),  # 0 is not false (serde, as TEI reads it)
    ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": "1"}, "top_n"),
    ("/v2/rerank", {"query": "q", "documents": ["d"], "priority": False}, "priority"),
    ("/v1/rerank", {"query": "q", "documents": ["d"], "max_chunks_per_doc": True}, "max_chunks_per_doc"),
])
def test_dialect_bodies_take_their_documented_types_only(fuzzed, path, body, field):
    code, out = _post(fuzzed, path, body)
    assert code == 422, out
    assert field in json.dumps(out)


def test_a_whole_number_written_with_a_point_is_a_whole_number(fuzzed):
    code, out = _post(fuzzed, "/v1/rerank", {"query": "q", "documents": ["a", "b", "c"], "top_n": 2.0})
    assert code == 200 and len(out["results"]) == 2, out


def test_a_blank_text_is_blank_in_the_document_as_in_the_engine():
    """The fuzzer sent texts of \\x1c and \\x1d (blank to str.strip, not to its regex engine's \\s): the
    document's pattern spells the blanks out, and agrees with the engine on every code point."""
    not_blank, no_nul = re.compile(NOT_BLANK), re.compile(NO_NUL)
    for c in map(chr, range(sys.maxunicode + 1)):
        text = f" {c}\t"
        assert bool(not_blank.search(text) and no_nul.search(text)) == (bool(text.strip()) and c != "\x00"), \
            f"U+{ord(c):04X}"


def test_a_search_that_leaves_recall_k_out_fits_a_lower_max_recall_k(fuzzed):
    """The fuzzer's Searches were nearly all refused: recall_k defaulted to 100, over this server's
    --max-recall-k of 64. The defaults now fit the limit."""
    url = f"{fuzzed.http_url}/tandem.v1.IndexService"
    assert call(f"{url}/CreateCollection", {"collection": "defaults"}, token=TOKENS["admin"]).status == 200
    assert call(f"{url}/Upsert", {"collection": "defaults", "documents": [{"id": "a", "text": "wing stall"}]},
                token=TOKENS["admin"]).status == 200
    code, out = _post(fuzzed, "/tandem.v1.SearchService/Search", {"collection": "defaults", "query": "wing stall",
                                                                   "rerank": False})
    assert code == 200 and [h["id"] for h in out["hits"]] == ["a"], out


def test_a_tei_body_at_rerank_fails_in_teis_envelope(fuzzed):
    code, out = _post(fuzzed, "/rerank", {"texts": ["a"]})  # no query
    assert code == 422 and set(out) == {"error", "error_type"}, out
