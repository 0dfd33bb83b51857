"""Asking a person before a tool call runs.

A running cell cannot receive widget events: the kernel handles them between cells (the usual
workaround, replaying the kernel's message loop from inside the cell, does not work with the
current ipykernel), so the question goes through the notebook's own input prompt, which a running
cell can read: JupyterLab shows a text box under the cell, a terminal a prompt.
"""

from __future__ import annotations

from ._tools import CallRecord, describe_call

__all__ = ["ask"]


def ask(record: CallRecord) -> bool:
    answer = input(f"Run {describe_call(record.name, record.raw_arguments)}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")
