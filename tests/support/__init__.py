"""What the tests share: server processes, checkpoints built on disk, datasets, certificates, filters, stubs.

Tests import from here, never from conftest or from one another."""
