"""The row a box runs one engine job from: its action button, a progress bar, Cancel, and a status line.

The Recommend box (widgets/advice_box.py) and the Importance matrix box (widgets/imatrix_box.py) run
their jobs the same way, so they build this row, and move its progress bar through starting, done
and stopped, with the same code. Object names are made from a prefix ("advice" → adviceProgress,
adviceCancelButton, adviceStatus) because tests and screenshots find the widgets by them.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QBoxLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton


def selectable_label(text: str = "") -> QLabel:
    """A wrapped label whose text the user can select and copy (a path, an error message)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


@dataclass(frozen=True)
class JobRow:
    """The widgets `add_job_row` made (the action button stays the caller's)."""

    progress: QProgressBar
    cancel_button: QPushButton
    status: QLabel


def add_job_row(layout: QBoxLayout, action: QPushButton, *, prefix: str, cancel_tip: str) -> JobRow:
    """Add `action`, a progress bar and a Cancel button in one row to `layout`, the status line under
    them, and return the new widgets. The caller connects Cancel (its own signal)."""
    progress = QProgressBar()
    progress.setObjectName(f"{prefix}Progress")
    progress.setRange(0, 1)
    progress.setValue(0)
    progress.setFormat("")
    progress.setTextVisible(True)
    cancel_button = QPushButton("Cancel")
    cancel_button.setObjectName(f"{prefix}CancelButton")
    cancel_button.setToolTip(cancel_tip)
    row = QHBoxLayout()
    row.addWidget(action)
    row.addWidget(progress, 1)
    row.addWidget(cancel_button)
    layout.addLayout(row)
    status = selectable_label("")
    status.setObjectName(f"{prefix}Status")
    layout.addWidget(status)
    return JobRow(progress=progress, cancel_button=cancel_button, status=status)


def show_starting(progress: QProgressBar) -> None:
    """Busy (no fraction known) until the job's first progress report: loading, tokenizing."""
    progress.setRange(0, 0)
    progress.setFormat("starting…")


def show_done(progress: QProgressBar) -> None:
    progress.setRange(0, 1)
    progress.setValue(1)
    progress.setFormat("done")


def show_stopped(progress: QProgressBar, cancelled: bool) -> None:
    """The job ended without a result: cancelled by the user, or failed."""
    progress.setRange(0, 1)
    progress.setValue(0)
    progress.setFormat("stopped" if cancelled else "failed")


__all__ = ["JobRow", "add_job_row", "selectable_label", "show_done", "show_starting", "show_stopped"]
