"""Benchmarks: `tandem bench` (or `python -m benchmarks.run`) writes a table and JSON."""
