"""The `tandem` command's client side against a live server: collections, search, rerank (human and --json),
and ingest from BEIR, plain JSONL and a folder of text files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tandem import Client
from tests.support.serverproc import REPO


def tandem(server, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "tandem.cli", *args, "--target", server.target], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def ingested(server, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rows = [{"id": f"j{i}", "text": t, "metadata": {"kind": "jsonl", "i": i}} for i, t in enumerate([
        "Shock waves form ahead of a blunt body in supersonic flow.",
        "The boundary layer thickens downstream of the leading edge.",
        "Library catalogues index books by subject headings.",
        "Heat transfer to a flat plate at hypersonic speeds.",
    ])]
    (d / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    folder = d / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "wings.md").write_text("# Swept wings\n\nSwept wings delay the drag rise near the speed of sound.\n")
    (folder / "sub" / "plates.txt").write_text("Vibration of thin plates\nPlates vibrate in bending modes.\n")
    (folder / "ignored.pdf").write_bytes(b"%PDF")
    return d


def test_ingest_plain_jsonl_and_a_text_folder(server, ingested):
    r = tandem(server, "ingest", str(ingested / "docs.jsonl"), "--collection", "cli_jsonl", "--json")
    report = json.loads(r.stdout)
    assert (report["documents"], report["passages"]) == (4, 4) and report["docs_per_second"] > 0
    r = tandem(server, "ingest", str(ingested / "notes"), "--collection", "cli_notes")
    assert "ingested 2 documents (2 passages)" in r.stdout and "docs/s" in r.stdout and "passages/s" in r.stdout
    with Client(server.target) as c:
        hits = c.search("cli_notes", "drag rise of swept wings", top_n=2, rerank=False)
        top = hits[0]
        assert top.id == "wings.md" and top.metadata == {"path": "wings.md", "title": "Swept wings"}
        assert {h.id for h in hits} == {"wings.md", "sub/plates.txt"}
        hit = c.search("cli_jsonl", "library subject headings", top_n=1, rerank=False)[0]
        assert hit.id == "j2" and hit.metadata == {"kind": "jsonl", "i": 2}
        assert type(hit.metadata["i"]) is int  # whole numbers come back as stored, not as 2.0


def test_ingest_progress_counts_what_was_stored_and_skipped_documents_apart(server, tmp_path):
    rows = [{"id": f"p{i}", "text": f"document {i} about wings and plates"} for i in range(5)]
    rows.insert(2, {"id": "empty", "text": "  "})
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = tandem(server, "ingest", str(tmp_path / "docs.jsonl"), "--collection", "cli_progress", "--batch", "2")
    assert "5/5" in r.stderr and "skipped=1" in r.stderr, r.stderr  # the total excludes the empty document
    assert "ingested 5 documents" in r.stdout and "skipped 1 documents with no text: empty" in r.stdout
    with Client(server.target) as c:
        assert c.describe("cli_progress").documents == 5


def test_ingest_chunked_from_beir(server, tmp_path):
    rows = [json.loads(x) for x in (REPO / "datasets" / "cranfield" / "corpus.jsonl").read_text().splitlines()[:20]]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    r = tandem(server, "ingest", str(tmp_path), "--collection", "cli_beir", "--chunk-tokens", "64",
               "--chunk-overlap", "8", "--json")
    report = json.loads(r.stdout)
    assert report["documents"] == 20 and report["passages"] > 20 and report["passages_per_second"] > 0


def test_collections_search_and_rerank_print_tables_and_json(server, ingested):
    tandem(server, "ingest", str(ingested / "docs.jsonl"), "--collection", "cli_tables")
    out = tandem(server, "collections").stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("cli_tables "))
    assert line.split()[1:3] == ["4", "4"] and "all-MiniLM-L6-v2" in line
    listed = json.loads(tandem(server, "collections", "--json").stdout)
    assert {"collection": "cli_tables", "documents": "4"}.items() <= next(
        x for x in listed if x["collection"] == "cli_tables").items()

    out = tandem(server, "search", "cli_tables", "shock waves in supersonic flow", "--top-n", "2").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["#", "id", "score", "text"] and len(lines) >= 4
    assert lines[2].split()[0] == "1" and "2 hits, reranked" in out
    data = json.loads(tandem(server, "search", "cli_tables", "plates", "--mode", "sparse", "--filter", "i>=1",
                             "--filter", "kind in jsonl,other", "--no-rerank", "--json").stdout)
    assert data["hits"] and all(h["metadata"]["i"] >= 1 for h in data["hits"]) and not data.get("reranked")

    out = tandem(server, "rerank", "heat transfer", "heat transfer to a plate", "library books", "--top-n", "1").stdout
    assert out.splitlines()[2].split()[0] == "1" and "pairs" in out
    data = json.loads(tandem(server, "rerank", "q", "doc a", "doc b", "--json").stdout)
    assert sorted(r.get("index", 0) for r in data["results"]) == [0, 1] and data["usage"]["pairs"] == 2


def test_errors_are_one_line_with_the_status(server):
    r = tandem(server, "search", "no_such_collection", "q", check=False)
    assert r.returncode == 1 and r.stderr.startswith("tandem search: NOT_FOUND: ") and "no_such_collection" in r.stderr
    r = tandem(server, "search", "cli_tables", "q", "--filter", "year ~ 3", check=False)
    assert r.returncode == 2 and "cannot read filter" in r.stderr
