"""A floor of free space under the embedded engine's data: writes are refused while the disk is below it.

milvus-lite out of space does not fail a write: it retries it inside the engine for minutes (75 tries) and then
reports it as an unknown error, while searches go on. So Tandem keeps a margin free (`--min-free-disk-mb`), the
way Elasticsearch's flood-stage watermark does: below it, writes get RESOURCE_EXHAUSTED at once, with the disk
and its free space named; reads keep serving; above it again, writes resume by themselves. A Milvus server
manages its own disks, so the floor applies to the embedded engine only.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tandem.server.errors import Kind
from tandem.server.storage.errors import StoreError

log = logging.getLogger(__name__)


class DiskFull(StoreError):
    kind = Kind.RESOURCE_EXHAUSTED
    retry_after = 60.0  # space comes back when a person frees it, not within the usual second


class Floor:
    def __init__(self, folder: str | Path, min_free_bytes: int):
        self.folder, self.min_free_bytes = Path(folder), min_free_bytes
        self._refusing = False  # so that crossing the floor is logged once each way, not once per write

    def check(self) -> None:
        """Raise DiskFull while the folder's disk has less than the floor free (one statvfs call)."""
        if self.min_free_bytes <= 0:
            return
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:  # the folder cannot be asked (removed under us): the engine's own error will say more
            return
        if free >= self.min_free_bytes:
            if self._refusing:
                self._refusing = False
                log.warning("the disk that holds %s has %.1f MB free again: writes are accepted", self.folder,
                            free / 1e6)
            return
        message = (f"the disk that holds {self.folder} has {free / 1e6:.1f} MB free, below the "
                   f"{self.min_free_bytes / 1e6:.0f} MB kept free for the embedded Milvus engine: writes are refused "
                   "until space is freed (searches keep serving). Free space on that disk, or move --milvus-uri to "
                   "a larger one; --min-free-disk-mb sets the floor")
        if not self._refusing:
            self._refusing = True
            log.error("%s", message)
        raise DiskFull(message)
