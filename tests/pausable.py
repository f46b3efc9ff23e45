"""The pause/resume half of an SSH channel, recorded: what output flow control drives
(server.output.Pausable), for tests of it without a channel."""

from __future__ import annotations


class RecordedChannel:
    """Whether the channel is paused now."""

    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
