"""OpenVINO backends: the same models, their transformer run by OpenVINO on the CPU.

Only the transformer forward changes. Tokenisation stays sentence-transformers' `preprocess`, and the modules
after the transformer (pooling, normalisation) stay sentence-transformers' own, so the batcher, the token
budget and the way a score is produced are the torch backend's. The transformer is converted from the loaded
torch model on first use (no download) and saved as OpenVINO IR under the cache folder, keyed by the model's
files and the OpenVINO version; later starts load the IR. The precision is a compile-time hint: bf16 runs on
AVX512_BF16/AMX, f32 elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from workers.backends import CrossEncoderBackend, EmbedderBackend, is_causal_reranker

log = logging.getLogger(__name__)
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tandem"


def _model_key(source_path: str, kind: str) -> str:
    """Changes when the model's files or OpenVINO change, so a stale IR is never reused."""
    import openvino

    h = hashlib.sha256(f"{kind}|{Path(source_path).resolve()}|{openvino.__version__}".encode())
    for f in sorted(Path(source_path).rglob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".txt", ".model"):
            st = f.stat()
            h.update(f"{f.relative_to(source_path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"{Path(source_path).name}-{h.hexdigest()[:16]}"


def compile_transformer(st_model, source_path: str, kind: str, precision: str, cache_dir: str | Path | None):
    """The model's transformer as an OpenVINO CompiledModel, converting and caching the IR on first use."""
    import openvino as ov

    folder = Path(cache_dir or default_cache_dir()) / "openvino" / _model_key(source_path, kind)
    xml = folder / "model.xml"
    if not xml.exists():
        example = st_model.preprocess([("warm up", "warm up")] if kind == "reranker" else ["warm up"])
        inputs = {k: v for k, v in example.items() if k in _INPUTS}
        ir = ov.convert_model(st_model[0].auto_model, example_input=inputs)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"model.{os.getpid()}.xml"
        ov.save_model(ir, tmp, compress_to_fp16=False)
        tmp.with_suffix(".bin").rename(xml.with_suffix(".bin"))
        tmp.rename(xml)  # last: an interrupted conversion leaves no model.xml behind
        log.info("converted %s to OpenVINO IR in %s", source_path, folder)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
              "INFERENCE_NUM_THREADS": str(torch.get_num_threads())}
    compiled = core.compile_model(str(xml), "CPU", config)
    return compiled, [i.get_any_name() for i in compiled.inputs]


class _OpenVINO:
    backend = "openvino"

    def _setup(self, model, source_path: str, precision: str, cache_dir):
        self.precision = precision
        self.dtype = "bfloat16" if precision == "bf16" else "float32"
        self._compiled, self._input_names = compile_transformer(model, source_path, self.kind, precision, cache_dir)
        self._request = self._compiled.create_infer_request()  # used only on the compute thread

    def _transformer(self, features: dict) -> np.ndarray:
        out = self._request.infer({k: features[k].numpy() for k in self._input_names})
        return next(iter(out.values()))


class OpenVINOCrossEncoderBackend(_OpenVINO, CrossEncoderBackend):
    def __init__(self, model, name: str, source: str = "", precision: str = "fp32", *, source_path: str = "",
                 cache_dir=None):
        if is_causal_reranker(model):
            raise ValueError(f"{name} is a causal-LM reranker; the OpenVINO backend serves sequence-classification "
                             "cross-encoders only. Serve it with --backend torch.")
        super().__init__(model, name, source, "fp32")  # tokenizers and limits; the torch weights stay fp32
        self._setup(self.model, source_path, precision, cache_dir)

    def run(self, pairs):
        logits = self._transformer(self.model.preprocess(list(pairs)))
        out = logits[:, 0].astype(np.float32).tolist()
        if not all(np.isfinite(out)):
            raise FloatingPointError("model produced a non-finite score")
        return out


class OpenVINOEmbedderBackend(_OpenVINO, EmbedderBackend):
    def __init__(self, model, name: str, source: str = "", precision: str = "fp32", *, source_path: str = "",
                 cache_dir=None):
        super().__init__(model, name, source, "fp32")
        self._setup(self.model, source_path, precision, cache_dir)

    @torch.inference_mode()
    def run(self, texts):
        features = self.model.preprocess(list(texts))
        features["token_embeddings"] = torch.from_numpy(np.asarray(self._transformer(features), dtype=np.float32))
        for module in list(self.model)[1:]:  # pooling, normalisation: sentence-transformers' own
            features = module(features)
        emb = torch.nn.functional.normalize(features["sentence_embedding"].float(), p=2, dim=1).numpy()
        if not np.isfinite(emb).all():
            raise FloatingPointError("model produced a non-finite embedding")
        return list(emb)
