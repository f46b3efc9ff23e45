"""The examples that end each `scout` command's --help: two or three lines a newcomer
can copy, kept here so that the help and the README's CLI section say the same."""

from __future__ import annotations

__all__ = ["ATTACH", "COMPLETION", "CP", "EXEC", "HEALTH", "HOSTS", "MCP", "SCOUT"]


def _block(*lines: str) -> str:
    """An epilog paragraph: "examples:" and the lines, indented as argparse indents."""
    return "\n".join(["examples:", *(f"  {line}" for line in lines)])


SCOUT = _block(
    "scout exec web1 -- uptime",
    "scout exec 'web-*' '!web3' --max-failures 2 -- systemctl restart agent",
    "scout hosts -l role=web",
)
EXEC = _block(
    "scout exec web1 -- df -h /                  # one host: its output, its exit code",
    "scout exec -l role=web --json -- uptime     # many hosts: one JSON object each",
    "echo reload | scout exec web1 web2 -- cat   # stdin goes to every host",
)
ATTACH = _block(
    "scout exec web1 --idempotency-key build-7 --detach-grace 1h -- make all",
    "scout attach web1 build-7                  # its output so far, then live",
    "scout attach web1 build-7 --stdout-offset 52000   # only what you do not have",
)
HOSTS = _block(
    "scout hosts                      # the inventory, as a table",
    "scout hosts 'web*' '!web3'       # names and globs; ! excludes",
    "scout hosts 'role=web,region in (eu,us)' --json",
)
CP = _block(
    "scout cp ./app.conf 'web*:/etc/app.conf' --mode 0644   # to every web host",
    "scout cp ./motd -l role=web:/etc/motd",
    "scout cp web1:/var/log/app.log ./app.log             # from one host",
)
MCP = _block(
    "scout mcp                                     # stdio, for Claude Desktop or Code",
    "scout mcp --http 127.0.0.1:8765               # streamable HTTP on loopback",
    "scout mcp --local-files ~/scout-files --max-output 16384",
)
HEALTH = _block(
    "scout health                                  # SERVING, exit 0",
    "scout health --service scout.v1.ExecService   # one service's status",
)
COMPLETION = _block(
    'eval "$(scout completion bash)"             # in ~/.bashrc',
    'scout completion zsh > "${fpath[1]}/_scout"  # then restart zsh',
    "scout completion fish > ~/.config/fish/completions/scout.fish",
)
