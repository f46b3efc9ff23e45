"""scout's server: a grpc.aio ExecService over a sharded SSH connection pool.

docs/architecture.md draws the request path and says who owns what. The modules, by job:

    start and configure   main, __main__, config, configfile, inventory, selector, demo
    serve                 app (assembly, reloads, shutdown), rpc (the loop around each RPC),
                          service (the handlers), stream (Stream), fanout (ExecuteMany),
                          introspection (health, reflection), tls
    decide                callers (identity, policy), requests (checks, the command line),
                          errors (what can go wrong), responses (the answers)
    run a command         launch (the way in and out), command (one channel), output
    move files            files (Upload, Download), uploadmany, sftpchannel (an SFTP
                          channel in a pool place), pathpolicy (paths globs), spool
    hold connections      pool, poolstate (the one assignment step), connector, sshfiles
    record                audit, logs, counters, metrics
    scale out             workers, workermetrics, fdlimit
    local SSH server      localshell, keyfiles (the demo's host and the tests' base)
    build                 protogen (the stubs from protos/)
"""
