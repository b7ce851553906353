"""One compute thread per device, shared by every model on that device.

On a CPU, each thread that runs torch ops gets its own OpenMP thread team. Once a process has more OpenMP
threads than cores, libgomp stops spinning between parallel regions, and every op then pays a futex wake-up.
On the 2-core dev VM a second team that merely exists slows a MiniLM-L6 forward pass by about a quarter
(`python -m benchmarks.omp_teams`). One thread per device also keeps the embedder and the reranker from
running at the same time on the same cores, which a CPU cannot do faster anyway.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_pools: dict[str, ThreadPoolExecutor] = {}
_teams: dict[str, object] = {}


def device_key(device) -> str:
    """'cpu', 'cuda:0', ... for a torch.device or a string."""
    d = str(device)
    return "cuda:0" if d == "cuda" else d


def _name_os_thread(name: str) -> None:
    """Give the thread an OS-level name too, so `top -H` and /proc show which thread is the model."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass  # not Linux


def compute_pool(device) -> ThreadPoolExecutor:
    """The single thread that runs every model call (and model load) for `device`."""
    key = device_key(device)
    name = f"compute-{key.replace(':', '')}"
    with _lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=_name_os_thread,
                                             initargs=(name,))
        return _pools[key]


def compute_team(device):
    """The thread team of `device`'s compute thread (workers/team.py): torch's OpenMP team on a CPU, resized
    pass by pass; None on a GPU or with one thread."""
    key = device_key(device)
    if key != "cpu":
        return None
    with _lock:
        if key not in _teams:
            from tandem.workers.team import torch_team

            _teams[key] = torch_team()
        return _teams[key]
