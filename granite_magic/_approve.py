"""Asking a person before a tool call runs.

A running cell cannot receive widget events: the kernel handles them between cells (the usual
workaround, replaying the kernel's message loop from inside the cell, does not work with the
current ipykernel), so the question goes through the notebook's own input prompt, which a running
cell can read: JupyterLab shows a text box under the cell, a terminal a prompt.
"""

from __future__ import annotations

from typing import Any

from ._tools import CallRecord, describe_call

__all__ = ["WAITING", "Approval", "ask"]

WAITING = "waiting for your approval: answer y or n in the box below"


def ask(record: CallRecord) -> bool:
    answer = input(f"Run {describe_call(record.name, record.raw_arguments)}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


class Approval:
    """``ask``, with the cell's status line saying that the cell waits for an answer while it does.

    ``view`` is the live view of the turn (set once it is shown); one without a status line (a terminal, where
    the prompt itself is the last line) is left alone."""

    def __init__(self, view: Any = None) -> None:
        self.view = view

    def __call__(self, record: CallRecord) -> bool:
        status = getattr(self.view, "status", None)
        if status is not None:
            status(WAITING)
        try:
            return ask(record)
        finally:
            if status is not None:
                status("running the tool calls")
