"""The scout contract: Python stubs generated from protos/ by `make protos` (scout.v1),
and what the server and the client share beside it (allocator: malloc kept for large
messages)."""
