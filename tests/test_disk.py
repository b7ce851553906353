"""A full disk under the embedded store (issue 36): the data folder on a small tmpfs made for the test. Writes
are refused at once below the floor (--min-free-disk-mb), with the disk named; reads keep serving; writes resume
when space comes back; nothing acknowledged is lost across a restart. Needs root to mount (CI runs as root)."""

from __future__ import annotations

import shutil
import time

import grpc
import httpx
import pytest

from tandem.v1 import document_pb2, index_pb2, index_pb2_grpc, search_pb2, search_pb2_grpc
from tests.support.checkpoints import bundled_encoder
from tests.support.disk import fill, small_disk

FP32 = ("--backend", "torch", "--precision", "fp32")
FLOOR_MB = 8


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk", "64m") as d:
        yield d


def _docs(start: int, n: int):
    return [document_pb2.Document(id=f"d{i}", text=f"document {i} on the heat transfer of a heated flat plate")
            for i in range(start, start + n)]


def test_a_full_data_disk_refuses_writes_at_once_and_keeps_serving_reads(make_server, disk):
    flags = ("--reranker", "none", "--embedder", bundled_encoder(), *FP32, "--warmup", "false",
             "--milvus-uri", str(disk / "m.db"), "--min-free-disk-mb", str(FLOOR_MB))
    s = make_server(*flags)
    ch = s.channel()
    ix, sr = index_pb2_grpc.IndexServiceStub(ch), search_pb2_grpc.SearchServiceStub(ch)
    ix.CreateCollection(index_pb2.CreateCollectionRequest(collection="d"), timeout=60)
    assert ix.Upsert(index_pb2.UpsertRequest(collection="d", documents=_docs(0, 40)), timeout=60).upserted == 40
    # Something else fills the disk to below the floor.
    fill(disk / "filler", leave=(FLOOR_MB - 2) * 1_000_000)
    assert shutil.disk_usage(disk).free < FLOOR_MB * 1_000_000
    for _ in range(3):
        t = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            ix.Upsert(index_pb2.UpsertRequest(collection="d", documents=_docs(40, 10)), timeout=120)
        assert time.monotonic() - t < 30  # refused at once, not after the engine's minutes of retries
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
        assert str(disk) in e.value.details() and "MB free" in e.value.details(), e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # a new collection is a write too
        ix.CreateCollection(index_pb2.CreateCollectionRequest(collection="e"), timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # HTTP (Connect): 429, and a Retry-After that says this is not the usual second's wait.
    r = httpx.post(f"{s.http_url}/tandem.v1.IndexService/Upsert", timeout=60,
                   json={"collection": "d", "documents": [{"id": "h", "text": "x"}]})
    assert r.status_code == 429 and r.json()["code"] == "resource_exhausted" and r.headers["retry-after"] == "60"
    # Reads keep serving, and the refusal is logged once, not once per call.
    hits = sr.Search(search_pb2.SearchRequest(collection="d", query="heated plate", top_n=50, recall_k=50,
                                              rerank=False), timeout=60).hits
    assert len(hits) == 40
    assert s.log().count("kept free for the embedded Milvus engine") == 1, s.log()[-3000:]
    # Space comes back: writes resume without a restart.
    (disk / "filler").unlink()
    assert ix.Upsert(index_pb2.UpsertRequest(collection="d", documents=_docs(40, 10)), timeout=60).upserted == 10
    assert "free again: writes are accepted" in s.log()
    ch.close()
    assert s.terminate() == 0
    # Every acknowledged document is there after a restart.
    again = make_server(*flags)
    with again.channel() as ch:
        info = index_pb2_grpc.IndexServiceStub(ch).DescribeCollection(
            index_pb2.DescribeCollectionRequest(collection="d"), timeout=60).info
        assert info.documents == 50
    again.terminate()
