"""Backends whose transformer runs in another runtime (OpenVINO, ONNX Runtime) from a locally converted copy.

Only the transformer forward changes. Tokenisation stays sentence-transformers' `preprocess`, and the modules
after the transformer (pooling, normalisation) stay sentence-transformers' own, so the batcher, the token budget
and the way a score is produced are the torch backend's. A runtime module supplies `compile(st_model, kind,
precision, folder) -> infer(features) -> first output`; the converted files are cached under a folder keyed by
the model's files and the runtime's version, so a stale conversion is never reused and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from tandem.workers.backends import CrossEncoderBackend, EmbedderBackend, is_causal_reranker

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_cache_dir() -> Path:
    """--cache-dir's default: TANDEM_CACHE_DIR (what the server reads too), else $XDG_CACHE_HOME/tandem."""
    if os.environ.get("TANDEM_CACHE_DIR"):
        return Path(os.environ["TANDEM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tandem"


def model_key(source_path: str, kind: str, *versions: str) -> str:
    """Changes when the model's files (size, mtime) or any of `versions` change."""
    h = hashlib.sha256("|".join([kind, str(Path(source_path).resolve()), *versions]).encode())
    for f in sorted(Path(source_path).rglob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".txt", ".model"):
            st = f.stat()
            h.update(f"{f.relative_to(source_path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"{Path(source_path).name}-{h.hexdigest()[:16]}"


def example_inputs(st_model, kind: str) -> dict:
    """A tokenised example, for tracing the transformer (the inputs it takes, in the tokenizer's names)."""
    example = st_model.preprocess([("warm up", "warm up")] if kind == "reranker" else ["warm up"])
    return {k: v for k, v in example.items() if k in INPUTS}


def atomic_write(final: Path, write) -> None:
    """`write(tmp_path)` then rename, so an interrupted conversion never leaves a file that looks finished."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.stem}.{os.getpid()}{final.suffix}")
    write(tmp)
    tmp.rename(final)


# OpenVINO compiles a model's kernels for each input shape it meets and keeps them (about 1 MB a shape for MiniLM,
# up to 5,000 shapes by default): with every batch size and every padded length a new shape, a server's memory
# grew by 600 MB in a 30-minute soak. Lengths rounded up to a multiple of 16 (padding the attention mask ignores)
# leave about 250 shapes under the CPU token budget, and the runtime's cache is capped as well.
PAD_MULTIPLE = 16


def pad_length(features: dict, pad_id: int, limit: int, multiple: int = PAD_MULTIPLE) -> dict:
    """`features` with every (batch, length) tensor padded on the right to a length that is a multiple of
    `multiple` (never past `limit`, the model's longest input): input ids with the tokenizer's pad id, attention
    mask and token types with 0."""
    ids = features.get("input_ids")
    if ids is None or ids.dim() != 2 or ids.shape[1] % multiple == 0:
        return features
    extra = min(multiple - ids.shape[1] % multiple, max(0, limit - ids.shape[1]))
    if extra == 0:
        return features
    out = dict(features)
    for name, t in features.items():
        if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape == ids.shape:
            out[name] = torch.nn.functional.pad(t, (0, extra), value=pad_id if name == "input_ids" else 0)
    return out


class _Exported:
    backend = ""
    runtime = None  # the module: compile(st_model, kind, precision, folder, threads), version(), PRECISIONS

    def _setup(self, model, source_path: str, precision: str, cache_dir):
        rt = self.runtime
        if precision not in rt.PRECISIONS:
            raise ValueError(f"the {self.backend} backend runs {' or '.join(rt.PRECISIONS)}, not {precision}")
        self.precision = precision
        self.dtype = {"bf16": "bfloat16", "int8": "int8"}.get(precision, "float32")
        folder = Path(cache_dir or default_cache_dir()) / self.backend / model_key(source_path, self.kind,
                                                                                  rt.version())
        self._infer = rt.compile(model, self.kind, precision, folder, torch.get_num_threads())
        tokenizer = getattr(model, "tokenizer", None)
        self._pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)

    def _features(self, inputs) -> dict:
        return pad_length(self.model.preprocess(list(inputs)), self._pad_id, self.max_length)


class ExportedCrossEncoderBackend(_Exported, CrossEncoderBackend):
    def __init__(self, model, name: str, source: str = "", precision: str = "fp32", *, source_path: str = "",
                 cache_dir=None):
        if is_causal_reranker(model):
            raise ValueError(f"{name} is a causal-LM reranker; the {self.backend} backend serves "
                             "sequence-classification cross-encoders only. Serve it with --backend torch.")
        super().__init__(model, name, source, "fp32")  # tokenizers and limits; the torch weights stay fp32
        self._setup(self.model, source_path, precision, cache_dir)

    def run(self, pairs):
        logits = self._infer(self._features(pairs))
        out = np.asarray(logits, dtype=np.float32)[:, 0].tolist()
        if not all(np.isfinite(out)):
            raise FloatingPointError("model produced a non-finite score")
        return out


class ExportedEmbedderBackend(_Exported, EmbedderBackend):
    def __init__(self, model, name: str, source: str = "", precision: str = "fp32", *, source_path: str = "",
                 cache_dir=None):
        super().__init__(model, name, source, "fp32")
        self._setup(self.model, source_path, precision, cache_dir)

    @torch.inference_mode()
    def run(self, texts):
        features = self._features(texts)
        features["token_embeddings"] = torch.from_numpy(np.asarray(self._infer(features), dtype=np.float32))
        for module in list(self.model)[1:]:  # pooling, normalisation: sentence-transformers' own
            features = module(features)
        emb = torch.nn.functional.normalize(features["sentence_embedding"].float(), p=2, dim=1).numpy()
        if not np.isfinite(emb).all():
            raise FloatingPointError("model produced a non-finite embedding")
        return list(emb)


def backend_classes(backend: str, runtime, prefix: str) -> tuple[type, type]:
    """`prefix`CrossEncoderBackend and `prefix`EmbedderBackend for one runtime module (the module docstring)."""
    attrs = {"backend": backend, "runtime": runtime, "__module__": runtime.__name__}
    return (type(f"{prefix}CrossEncoderBackend", (ExportedCrossEncoderBackend,), attrs),
            type(f"{prefix}EmbedderBackend", (ExportedEmbedderBackend,), attrs))
