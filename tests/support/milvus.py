"""A Milvus server for tests: the embedded engine's binary serving TCP in its own process, reached over http://
like Milvus Standalone."""

from __future__ import annotations

import time


def wait_for(pred, timeout=30.0, every=0.25):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return False


class MilvusLite:
    def __init__(self, data_dir, port):
        from tandem.server.storage.embedded import EmbeddedMilvus

        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.engine = EmbeddedMilvus(str(data_dir / "milvus.db"), address=f"127.0.0.1:{port}")

    def start(self):
        self.engine.uri()
        assert wait_for(self.reachable, 60), "milvus-lite server did not start"
        return self

    def reachable(self) -> bool:
        from pymilvus import MilvusClient

        client = None
        try:
            client = MilvusClient(uri=self.uri, timeout=2)
            client.list_collections(timeout=2)
            return True
        except Exception:
            return False
        finally:
            if client is not None:  # an open probe keeps pinging, and the engine answers GOAWAY too_many_pings
                client.close()

    def stop(self):
        self.engine.stop()
