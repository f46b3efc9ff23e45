"""Generated from protos/scout/v1 by `make protos`; do not edit the *_pb2* files by hand."""
