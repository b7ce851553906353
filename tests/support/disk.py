"""Small filesystems for the full-disk tests: a tmpfs mounted for one test (root only; the test is skipped,
saying so, elsewhere) and a filler that takes its space."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, leave: int = 0) -> None:
    """Write `path` until its disk has about `leave` bytes free (0: until the disk refuses more)."""
    with open(path, "wb", buffering=0) as f:
        try:
            while shutil.disk_usage(path.parent).free > leave:
                f.write(b"\0" * min(1 << 20, max(4096, shutil.disk_usage(path.parent).free - leave)))
        except OSError:  # the disk is full
            pass
