"""scout's server: a grpc.aio ExecService over a sharded SSH connection pool."""
