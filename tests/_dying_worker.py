"""A `--jobs` worker that dies (os._exit, as a crash in native code would) when handed an input
named like `dies*`, and otherwise is the real one (pipeline.archive._worker). Module-level, so a
spawned process can import it."""
from __future__ import annotations

import os

from pipeline.archive import _worker


class _Inbox:
    def __init__(self, inner) -> None:
        self.inner = inner

    def get(self):
        task = self.inner.get()
        if task is not None and task.name.startswith("dies"):
            os._exit(3)
        return task


def worker(inbox, outbox, settings) -> None:
    _worker(_Inbox(inbox), outbox, settings)
