"""The mouse wheel scrolls the panel under the pointer, not a spin box or combo box it passes over.

Qt gives spin boxes and combo boxes the wheel (and focus with it: Qt.WheelFocus) as soon as the
pointer is over them, so scrolling a panel changed whatever value passed under the pointer (a
context size, once, in a screenshot session). One application-wide filter, installed by the main
window, makes every QAbstractSpinBox and QComboBox take focus only by click or Tab (StrongFocus) and
leave the wheel until it has focus: the event goes on to the scroll area around it. Charts
follow the same rule in widgets/chart.py: the wheel is theirs once they were clicked.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QAbstractScrollArea, QAbstractSpinBox, QApplication, QComboBox, QWidget

_GUARDED = (QAbstractSpinBox, QComboBox)


class WheelGuard(QObject):
    """The filter; `install_wheel_guard` puts one on the application."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        kind = event.type()
        if kind == QEvent.Type.Wheel:
            if isinstance(watched, _GUARDED) and not watched.hasFocus():
                assert isinstance(event, QWheelEvent)
                scroll_enclosing_area(watched, event)
                return True
        elif kind == QEvent.Type.Polish and isinstance(watched, _GUARDED):
            # Polish comes once, before the widget is first shown: every editor, wherever it is made.
            watched.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # no focus (and no wheel) on hover
        return False


def scroll_enclosing_area(widget: QWidget, event: QWheelEvent) -> None:
    """Hand the wheel to the scroll area around `widget`, as if the widget were not there (what
    widgets/chart.py does for a chart). Sent on explicitly: Qt passes an ignored wheel event to the
    parent only when it came from the window system."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QAbstractScrollArea):
        parent = parent.parentWidget()
    if parent is None:
        event.ignore()
        return
    bar = parent.verticalScrollBar()
    if event.angleDelta().x() and not event.angleDelta().y():
        bar = parent.horizontalScrollBar()
    QApplication.sendEvent(bar, event)
    event.accept()


_guard: WheelGuard | None = None


def install_wheel_guard(app: QApplication | None = None) -> WheelGuard:
    """Install the one WheelGuard on the application (again: a no-op) and return it."""
    global _guard
    target = app or QApplication.instance()
    assert target is not None, "a QApplication must exist first"
    if _guard is None:
        _guard = WheelGuard(target)
        target.installEventFilter(_guard)
    return _guard


__all__ = ["WheelGuard", "install_wheel_guard", "scroll_enclosing_area"]
