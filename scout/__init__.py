"""The scout contract: Python stubs generated from protos/ by `make protos`."""
