"""Tandem's gRPC server: one module per service, plus config, storage, metrics and the app that wires them."""
