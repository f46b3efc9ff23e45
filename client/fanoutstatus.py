"""What a fan-out has heard so far, in the words of its progress line and its summary.

ExecuteMany tells when a host ends (and, streaming, when it writes), never when it
starts: so "running" and "queued" are counted, not heard. The server starts a host as
soon as one of its max_parallel slots frees, so with `--max-parallel N` given, of the
hosts not ended min(N, left) run and the rest wait (the server may lower N to its own
maximum: then fewer run than shown). Without it, the server's default is unknown here
and the line says "running or queued". The total comes from ListHosts, asked
alongside; without it there is no total, and after Ctrl-C only the hosts heard from
can be named as stopped.

A host whose output reached the output cap is not a failure (its command may well have
exited 0), but it is never passed over in silence: the summary names it, and a run
whose every command exited 0 exits OUTPUT_CUT (client/exitcodes.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NOT_STARTED", "OK", "STOPPED", "SUMMARY_NAMES", "Tally"]

SUMMARY_NAMES = 20  # hosts named per summary line before "and N more"
OK = "ok"
NOT_STARTED = "not started"  # max_failures reached before the host's turn
STOPPED = "stopped by Ctrl-C"
# The summary's groups, in its order; each host that ended is in one.
GROUPS = (
    OK,
    "exited non-zero",
    "killed by a signal",
    "timed out",
    "could not run",
    NOT_STARTED,
)


def _detail(group: str) -> str:
    """A group's words on its detail line: Ctrl-C stops running hosts and queued ones
    alike, and the server does not say which were which."""
    return f"{group} (running, or not yet started)" if group == STOPPED else group


def _names(names: list[str]) -> str:
    """Some names, then "and N more"."""
    shown = ", ".join(names[:SUMMARY_NAMES])
    more = len(names) - SUMMARY_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


@dataclass
class Tally:
    """The hosts of one fan-out: targets (once ListHosts answered), ended, cut, heard."""

    parallel: int = 0  # --max-parallel; 0: the server's default, unknown here
    targets: set[str] | None = None  # every target's name, once known
    ended: dict[str, str] = field(default_factory=dict)  # host: its group (GROUPS)
    cut: dict[str, list[str]] = field(default_factory=dict)  # host: streams cut at the cap
    heard: set[str] = field(default_factory=set)  # hosts that wrote or ended

    def end(self, host: str, group: str, cut: list[str]) -> None:
        """Record how a host ended, and which of its streams were cut."""
        self.ended[host] = group
        self.heard.add(host)
        if cut:
            self.cut[host] = cut

    def progress(self) -> str:
        """The progress line: "3/5 done, 1 failed, 2 running, 0 queued"."""
        done = len(self.ended)
        failed = sum(1 for group in self.ended.values() if group != OK)
        if self.targets is None:
            return f"scout: {done} done, {failed} failed"
        total = len(self.targets | self.ended.keys())
        left = total - done
        text = f"scout: {done}/{total} done, {failed} failed"
        if not self.parallel:
            return f"{text}, {left} running or queued"
        running = min(self.parallel, left)
        return f"{text}, {running} running, {left - running} queued"

    def stopped(self) -> tuple[list[str], bool]:
        """After Ctrl-C: the hosts that had not ended, and whether that list is complete
        (without the targets, only the hosts heard from are known)."""
        if self.targets is not None:
            return sorted(self.targets - self.ended.keys()), True
        return sorted(self.heard - self.ended.keys()), False

    def summary(self, *, interrupted: bool) -> bytes:
        """Count the hosts by group, name the ones that did not exit 0, the ones stopped,
        and the ones whose output was cut (on stderr at the end)."""
        counts = {group: sorted(h for h, g in self.ended.items() if g == group) for group in GROUPS}
        stopped, complete = self.stopped() if interrupted else ([], True)
        if stopped:
            counts[STOPPED] = stopped
        total = len(self.ended) + len(stopped)
        parts = [f"{len(counts[OK])} ok"]
        failed = {group: names for group, names in counts.items() if group != OK and names}
        parts += [f"{len(names)} {group}" for group, names in failed.items()]
        head = f"scout: {total} host{'' if total == 1 else 's'}: {', '.join(parts)}"
        if self.cut:
            head += f"; output cut on {len(self.cut)}"
        lines = [head]
        lines += [f"scout: {_detail(group)}: {_names(names)}" for group, names in failed.items()]
        if interrupted and not complete:
            lines.append("scout: hosts not heard from are not counted (ListHosts did not answer)")
        if self.cut:
            cut = [f"{host} ({', '.join(streams)})" for host, streams in sorted(self.cut.items())]
            lines.append(f"scout: output cut at the output cap: {_names(cut)}")
        return "\n".join([*lines, ""]).encode(errors="replace")
