"""Read values out of a Prometheus text exposition (the server's /metrics)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str, **labels) -> list[tuple[dict, float]]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out.append((s.labels, s.value))
    return out


def value(text: str, name: str, **labels) -> float:
    return sum(v for _, v in samples(text, name, **labels))


def histogram_buckets(text: str, name: str, **labels) -> dict[float, float]:
    """Cumulative counts by upper bound."""
    return {float(l["le"]): v for l, v in samples(text, name + "_bucket", **labels)}
