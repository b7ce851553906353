"""Generated gRPC/protobuf code for the tandem.v1 contract (see proto/). Regenerate with `make proto`."""
