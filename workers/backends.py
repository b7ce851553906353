"""Model backends: the code that runs on a batcher's threads.

Each backend wraps a sentence-transformers model and goes through its own
`preprocess` + forward path, so a served score is what `CrossEncoder.predict`
or `SentenceTransformer.encode` gives for the same input. `measure` tokenises
only to learn lengths (for the token budget and usage); `run` tokenises again
with padding inside the model thread, which costs well under 1% of a forward
pass and keeps the two paths identical.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch


def _to_device(features: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def set_precision(model, precision: str):
    """The model in `precision` (fp32 | bf16 | fp16 | int8); the choice itself is server/precision.py's."""
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "fp16":
        return model.half()
    if precision == "int8":
        # Dynamic quantisation: int8 weights for every Linear, activations quantised per batch.
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}


def parameter_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (int8 dynamic quantisation packs its Linear weights
    outside `parameters()`, so those are counted from the packed params)."""
    n = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    for m in model.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            n += w.numel() * w.element_size() + (b.numel() * b.element_size() if b is not None else 0)
    return n


def is_causal_reranker(model) -> bool:
    """A CrossEncoder over a causal LM, scored by a yes/no logit (Qwen3-Reranker style)."""
    return any(type(m).__name__ == "LogitScore" for m in model)


class _Backend:
    kind = ""
    backend = "torch"
    pass_cost = None  # workers.passes.PassCost, measured at load (server/models.py)

    def __init__(self, model, name: str, source: str = "", precision: str = "fp32"):
        self.device = model.device
        self.max_length = int(model.max_seq_length or model.tokenizer.model_max_length)
        self.model = set_precision(model.eval(), precision)
        self.name = name
        self.source = source
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.parameter_bytes = parameter_bytes(self.model)
        # A tokenizer keeps its truncation/padding settings as mutable state, so two threads must never share
        # one: `measure` gets its own copy for its thread and one for inline use on the loop, and the model
        # thread keeps the model's.
        self._count = {inline: token_counter(model.tokenizer, self.max_length + 1) for inline in (False, True)}


def token_counter(tokenizer, max_length: int):
    """`count(items)`: token lengths of texts or (text, text) pairs, special tokens included and truncated at
    `max_length` as the transformers call truncates (longest_first, on the tokenizer's side), from a private
    copy. A fast tokenizer is counted by its Rust core, configured once: the transformers call costs more than
    the encoding itself for one short pair, and this runs on the event loop for every small request."""
    core = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if core is not None and hasattr(core, "encode_batch_fast"):
        core = copy.deepcopy(core)
        core.no_padding()
        core.enable_truncation(max_length, strategy="longest_first", direction=tokenizer.truncation_side)
        return lambda items: [len(e.ids) for e in core.encode_batch_fast(list(items))]
    tok = copy.deepcopy(tokenizer)

    def count(items):
        items = list(items)
        pairs = bool(items) and isinstance(items[0], tuple)
        first, second = ([a for a, _ in items], [b for _, b in items]) if pairs else (items, None)
        enc = tok(first, second, truncation=True, max_length=max_length, return_attention_mask=False,
                  return_token_type_ids=False)
        return [len(ids) for ids in enc["input_ids"]]

    return count


class CrossEncoderBackend(_Backend):
    """Scores (query, document) pairs; returns raw logits."""

    kind = "reranker"

    def __init__(self, model, name: str, source: str = "", precision: str = "fp32"):
        if model.num_labels != 1:
            raise ValueError(
                f"{name} has {model.num_labels} output labels; a reranker needs a single relevance logit"
            )
        super().__init__(model, name, source, precision)

    def measure(self, pairs: Sequence[tuple[str, str]], inline: bool = False) -> list[int]:
        # max_length + 1 lets a length above max_length mean "was truncated".
        return self._count[inline](pairs)

    def calibration_batches(self) -> tuple[list, list]:
        """The shapes workers.passes.calibrate times: one short pair, and 16 pairs of 18-48 tokens (padded, as
        served batches are: a batch without padding takes a faster attention path)."""
        return [("a b c d e f", "a b c d e f")], [("a " * 14, "a " * k) for k in range(1, 33, 2)]

    @torch.inference_mode()
    def run(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        features = _to_device(self.model.preprocess(list(pairs)), self.device)
        scores = self.model(features)["scores"].float()
        if scores.ndim > 1:
            scores = scores[:, 0]
        out = scores.cpu().tolist()
        if not all(math.isfinite(s) for s in out):
            raise FloatingPointError("model produced a non-finite score")
        return out


class EmbedderBackend(_Backend):
    """Embeds texts; returns L2-normalised float32 vectors."""

    kind = "embedder"

    def __init__(self, model, name: str, source: str = "", precision: str = "fp32"):
        super().__init__(model, name, source, precision)
        self.dimension = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                             else model.get_sentence_embedding_dimension())

    def measure(self, texts: Sequence[str], inline: bool = False) -> list[int]:
        return self._count[inline](texts)

    def calibration_batches(self) -> tuple[list, list]:
        """The shapes workers.passes.calibrate times: one short text, and 16 texts of 17-47 tokens (padded, as
        served batches are)."""
        return ["a b c d e f g h i j k l"], ["a " * k for k in range(15, 47, 2)]

    @torch.inference_mode()
    def run(self, texts: Sequence[str]) -> list[np.ndarray]:
        features = _to_device(self.model.preprocess(list(texts)), self.device)
        emb = self.model(features)["sentence_embedding"].float()
        emb = torch.nn.functional.normalize(emb, p=2, dim=1).cpu().numpy()
        if not np.isfinite(emb).all():
            raise FloatingPointError("model produced a non-finite embedding")
        return list(emb)
