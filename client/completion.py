"""`scout completion bash|zsh|fish`: a completion script for the shell, printed.

The options come from the parser itself (cli.py passes them in), so the scripts never
fall behind the command line. Host names come from the server when TAB is pressed:
the script runs `scout hosts --names` (a hidden option: one name a line; for exec, hosts
and attach) with the connection flags already typed (--target, --profile, --token-file,
--ca, --cert, --key, --tls), so it asks the same server, as the same caller, that the
command will; only the hosts that caller may use are offered. A word starting with `!` completes to
an exclusion (`!web3`). After exec's `--`, the command's own words complete as
commands and files. Nothing is completed when the server cannot be reached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["SHELLS", "Option", "script"]

SHELLS = ("bash", "zsh", "fish")
CONNECTION = ("--target", "--token-file", "--ca", "--cert", "--key", "--profile")
FILES = ("--token-file", "--ca", "--cert", "--key")


@dataclass(frozen=True)
class Option:
    """One option of a subcommand: its spellings, and whether a value follows it."""

    names: tuple[str, ...]
    takes_value: bool


def _words(commands: Mapping[str, Sequence[Option]], command: str) -> str:
    """A subcommand's option spellings, space-separated."""
    return " ".join(name for option in commands.get(command, ()) for name in option.names)


def _valued(commands: Mapping[str, Sequence[Option]]) -> list[str]:
    """Every spelling that takes a value and is not a file (those complete as files)."""
    names = {
        name
        for options in commands.values()
        for option in options
        if option.takes_value
        for name in option.names
        if name not in FILES
    }
    return sorted(names)


_BASH = r"""# scout completion for bash: eval "$(scout completion bash)" in ~/.bashrc
_scout_complete() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    local -a typed conn=()
    # The words as typed (":" and "=" do not split them); the last is under the cursor.
    read -r -a typed <<< "${COMP_LINE:0:COMP_POINT}"
    [[ ${COMP_LINE:COMP_POINT-1:1} == [[:space:]] ]] && typed+=("")
    local n=${#typed[@]} cmd=${typed[1]-} i
    COMPREPLY=()
    if (( n <= 2 )); then
        COMPREPLY=($(compgen -W "@COMMANDS@" -- "$cur"))
        return
    fi
    for (( i = 2; i < n - 1; i++ )); do
        case ${typed[i]} in
            --)
                if [[ $cmd == exec ]]; then
                    if (( i == n - 2 )); then
                        COMPREPLY=($(compgen -c -- "$cur"))
                    else
                        COMPREPLY=($(compgen -f -- "$cur"))
                    fi
                    return
                fi ;;
            @CONNECTION@) (( i < n - 2 )) && conn+=("${typed[i]}" "${typed[i+1]}") ;;
            @CONNECTION_EQ@|--tls) conn+=("${typed[i]}") ;;
        esac
    done
    case ${typed[n-2]} in
        @FILES@) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        @VALUED@) return ;;
    esac
    case $cmd in
        exec|hosts|attach)
            if [[ $cur == -* ]]; then
                [[ $cmd == exec ]] && COMPREPLY=($(compgen -W "@EXEC@" -- "$cur"))
                [[ $cmd == hosts ]] && COMPREPLY=($(compgen -W "@HOSTS@" -- "$cur"))
                [[ $cmd == attach ]] && COMPREPLY=($(compgen -W "@ATTACH@" -- "$cur"))
            else
                local IFS=$'\n' names
                names=$("${COMP_WORDS[0]}" hosts --names "${conn[@]}" 2>/dev/null)
                if [[ $cur == '!'* ]]; then
                    COMPREPLY=($(compgen -P '!' -W "$names" -- "${cur#!}"))
                else
                    COMPREPLY=($(compgen -W "$names" -- "$cur"))
                fi
            fi ;;
        health) COMPREPLY=($(compgen -W "@HEALTH@" -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "@SHELLS@" -- "$cur")) ;;
    esac
}
complete -o default -F _scout_complete scout
"""

_ZSH = r"""#compdef scout
# scout completion for zsh: scout completion zsh > "${fpath[1]}/_scout"
_scout() {
    local -a conn names
    local i cmd=${words[2]}
    if (( CURRENT == 2 )); then
        compadd -- @COMMANDS@
        return
    fi
    for (( i = 3; i < CURRENT; i++ )); do
        case ${words[i]} in
            --)
                if [[ $cmd == exec ]]; then
                    if (( i == CURRENT - 1 )); then _command_names; else _files; fi
                    return
                fi ;;
            @CONNECTION@) (( i < CURRENT - 1 )) && conn+=(${words[i]} ${words[i+1]}) ;;
            @CONNECTION_EQ@|--tls) conn+=(${words[i]}) ;;
        esac
    done
    case ${words[CURRENT-1]} in
        @FILES@) _files; return ;;
        @VALUED@) return ;;
    esac
    case $cmd in
        exec|hosts|attach)
            if [[ ${words[CURRENT]} == -* ]]; then
                case $cmd in
                    exec) compadd -- @EXEC@ ;;
                    hosts) compadd -- @HOSTS@ ;;
                    attach) compadd -- @ATTACH@ ;;
                esac
            else
                names=(${(f)"$(${words[1]} hosts --names $conn 2>/dev/null)"})
                if [[ ${words[CURRENT]} == '!'* ]]; then
                    compadd -- ${names/#/!}
                else
                    compadd -- $names
                fi
            fi ;;
        health) compadd -- @HEALTH@ ;;
        completion) compadd -- @SHELLS@ ;;
    esac
}
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _scout "$@"
else
    compdef _scout scout
fi
"""

_FISH = r"""# scout completion for fish:
# scout completion fish > ~/.config/fish/completions/scout.fish
function __scout_hosts
    set -l tokens (commandline -opc)
    set -l conn
    set -l i 3
    while test $i -le (count $tokens)
        switch $tokens[$i]
            case @CONNECTION_FISH@
                if test $i -lt (count $tokens)
                    set conn $conn $tokens[$i] $tokens[(math $i + 1)]
                end
            case @CONNECTION_EQ_FISH@ --tls
                set conn $conn $tokens[$i]
        end
        set i (math $i + 1)
    end
    set -l names ($tokens[1] hosts --names $conn 2>/dev/null)
    printf '%s\n' $names
    printf '!%s\n' $names
end

function __scout_before_dashes
    not contains -- -- (commandline -opc)
end

complete -c scout -f
complete -c scout -n __fish_use_subcommand -a '@COMMANDS@'
complete -c scout -n '__fish_seen_subcommand_from exec hosts attach; and __scout_before_dashes' \
    -a '(__scout_hosts)'
complete -c scout -n '__fish_seen_subcommand_from completion' -a '@SHELLS@'
"""


def _fish_options(commands: Mapping[str, Sequence[Option]]) -> str:
    """One `complete` line per option of each subcommand."""
    lines = []
    for command, options in commands.items():
        for option in options:
            flags = []
            for name in option.names:
                flags.append(f"-l {name[2:]}" if name.startswith("--") else f"-s {name[1:]}")
            if option.takes_value:
                flags.append("-F" if set(option.names) & set(FILES) else "-x")
            condition = f"__fish_seen_subcommand_from {command}"
            lines.append(f"complete -c scout -n '{condition}' {' '.join(flags)}")
    return "\n".join(lines) + "\n"


def script(shell: str, commands: Mapping[str, Sequence[Option]]) -> str:
    """The completion script for a shell (one of SHELLS); commands: each subcommand's
    options, from the parser."""
    values = {
        "@COMMANDS@": " ".join(commands),
        "@CONNECTION@": "|".join(CONNECTION),
        "@CONNECTION_EQ@": "|".join(f"{name}=*" for name in CONNECTION),
        "@CONNECTION_FISH@": " ".join(CONNECTION),
        "@CONNECTION_EQ_FISH@": " ".join(f"'{name}=*'" for name in CONNECTION),
        "@FILES@": "|".join(FILES),
        "@VALUED@": "|".join(_valued(commands)),
        "@EXEC@": _words(commands, "exec"),
        "@HOSTS@": _words(commands, "hosts"),
        "@ATTACH@": _words(commands, "attach"),
        "@HEALTH@": _words(commands, "health"),
        "@SHELLS@": " ".join(SHELLS),
    }
    template = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}[shell]
    for key, value in values.items():
        template = template.replace(key, value)
    if shell == "fish":
        template += _fish_options(commands)
    return template
