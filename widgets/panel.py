"""The shared frame of the four panels: a title over a scrolling stack of titled boxes."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QGroupBox, QLabel, QScrollArea, QVBoxLayout, QWidget


class Panel(QWidget):
    """A column of the main window; scrolls when the screen is too small for its boxes."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(title.replace(" ", "") + "Panel")
        title_label = QLabel(title)
        title_label.setObjectName("panelTitle")
        font = title_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        title_label.setFont(font)
        self._content = QWidget()
        self._boxes = QVBoxLayout(self._content)
        self._boxes.setContentsMargins(0, 0, 0, 0)
        self._boxes.addStretch(1)
        self._scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # Sideways only when a column is squeezed below what its boxes need: cut off, the right
        # edge of a box (values, buttons) would be out of reach.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        scroll.setWidget(self._content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(title_label)
        layout.addWidget(scroll, 1)
        self.setMinimumWidth(260)

    def add_box(self, title: str, body: QWidget | None = None) -> QGroupBox:
        box = QGroupBox(title)
        layout = QVBoxLayout(box)
        layout.setContentsMargins(6, 6, 6, 6)
        if body is not None:
            layout.addWidget(body)
        self._boxes.insertWidget(self._boxes.count() - 1, box)
        return box
