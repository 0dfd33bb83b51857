"""Asking a person before a tool call runs: Run / Skip buttons in a notebook, a question in a terminal.

A running cell normally cannot receive widget events (the kernel handles them between cells);
``jupyter_ui_poll`` lets the cell process them while it waits for the click.
"""

from __future__ import annotations

import html
import time

from ._tools import CallRecord, describe_call

__all__ = ["ask_in_terminal", "ask_with_buttons"]

POLL_EVENTS = 10  # widget events handled per poll
POLL_INTERVAL_S = 0.05  # how often the waiting cell looks for a click: fast enough to feel immediate


def ask_in_terminal(record: CallRecord) -> bool:
    answer = input(f"Run {describe_call(record.name, record.raw_arguments)}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def ask_with_buttons(record: CallRecord) -> bool:
    """Show the call with Run and Skip, and wait in this cell for one of them."""
    import ipywidgets as w
    from IPython.display import display
    from jupyter_ui_poll import ui_events

    call = html.escape(describe_call(record.name, record.raw_arguments))
    question = w.HTML(f"The model wants to run <code>{call}</code>")
    run, skip = w.Button(description="Run", button_style="primary"), w.Button(description="Skip")
    run.add_class("gm-approve-run")
    skip.add_class("gm-approve-skip")
    answer: list[bool] = []
    run.on_click(lambda _: answer.append(True))
    skip.on_click(lambda _: answer.append(False))
    box = w.HBox([question, run, skip])
    display(box)  # type: ignore[no-untyped-call]
    with ui_events() as poll:
        while not answer:
            poll(POLL_EVENTS)
            time.sleep(POLL_INTERVAL_S)
    decided = answer[0]
    question.value = f"{'Ran' if decided else 'Skipped'} <code>{call}</code>"
    for button in (run, skip):
        button.disabled = True  # the decision stays visible in the cell
    return decided
