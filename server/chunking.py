"""Long texts as overlapping windows of tokens: passages at ingest, rerank windows at query time.

Windows are cut on token boundaries of the model that will read them, moved back to the start of a word where
one is near so that a word is never split across two windows (re-tokenising a window then gives the same
tokens). A window is a character span of the original text; consecutive spans touch or overlap, so the text
is exactly the concatenation of its windows minus their overlaps (`join`).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    start: int  # character offsets into the text
    end: int
    tokens: int

    def of(self, text: str) -> str:
        return text[self.start:self.end]


class Splitter:
    """Splits texts with one model's tokenizer. Thread-safe: a fast tokenizer keeps mutable truncation state,
    so this owns a copy and takes turns on it."""

    def __init__(self, tokenizer):
        self._tok = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()

    def special_tokens(self, pair: bool = False) -> int:
        """Tokens the model adds around one text or a pair ([CLS] ... [SEP] ... [SEP] for BERT)."""
        return self._tok.num_special_tokens_to_add(pair=pair)

    def count(self, text: str) -> int:
        with self._lock:
            return len(self._tok(text, add_special_tokens=False, truncation=False)["input_ids"])

    def head(self, text: str, max_tokens: int) -> str:
        """The opening of `text` with at most max_tokens tokens, cut before a word where one is near. Only a
        prefix is tokenised: no token is longer than 32 characters in practice."""
        probe = text[:max_tokens * 32]
        with self._lock:
            offsets = self._tok(probe, add_special_tokens=False, truncation=False,
                                return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= max_tokens:
            return probe
        return windows(offsets, len(probe), max_tokens, 0)[0].of(probe)

    def split(self, text: str, max_tokens: int, overlap: int) -> list[Window]:
        """Windows of at most max_tokens tokens, each starting about `overlap` tokens before the previous
        one ends. A text that fits is one window."""
        with self._lock:
            offsets = self._tok(text, add_special_tokens=False, truncation=False,
                                return_offsets_mapping=True)["offset_mapping"]
        return windows(offsets, len(text), max_tokens, overlap)


def heads(splitter: Splitter, texts: list[str], max_tokens: int) -> list[str]:
    """Each text's opening of at most max_tokens tokens (Search's and Rerank's max_tokens_per_doc)."""
    return [splitter.head(t, max_tokens) for t in texts]


def windows(offsets: list[tuple[int, int]], length: int, max_tokens: int, overlap: int) -> list[Window]:
    n = len(offsets)
    if n <= max_tokens:
        return [Window(0, length, n)]

    def word_start(i: int) -> bool:  # token i begins a word: nothing glues it to the token before
        return i == 0 or offsets[i][0] > offsets[i - 1][1]

    out, s = [], 0
    while True:
        e = min(s + max_tokens, n)
        if e < n:
            back = e
            while back > s + max_tokens // 2 and not word_start(back):
                back -= 1
            e = back if word_start(back) else e  # no word start nearby (e.g. CJK): cut mid-word
        start = 0 if not out else offsets[s][0]
        end = length if e >= n else offsets[e][0]
        out.append(Window(start, end, e - s))
        if e >= n:
            return out
        nxt = max(e - overlap, s + 1)
        back = nxt
        while back > s + 1 and not word_start(back):
            back -= 1
        s = back if word_start(back) else nxt


def join(parts: list[tuple[int, str]]) -> str:
    """The text back from its windows, as (start offset, window text) in order."""
    out, end = [], 0
    for start, text in parts:
        out.append(text[end - start:] if end > start else text)
        end = max(end, start + len(text))
    return "".join(out)
