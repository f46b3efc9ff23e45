"""What the tests and the benchmarks share: real SSH servers to aim scout at, and checks on them.

sshd        a real OpenSSH sshd on loopback, started by the caller
scripted    in-process asyncssh servers (server.localshell) that tests steer
processes   remote commands are local processes: find them, wait for them to go
ports       a port nothing listens on
"""
