"""The shared frame of the four panels: a title over a scrolling stack of titled boxes."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QSize, Qt
from PySide6.QtWidgets import (
    QFrame,
    QGroupBox,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QVBoxLayout,
    QWidget,
)

_MARGIN = 6


class Panel(QWidget):
    """A column of the main window; scrolls up and down when the screen is too short for its boxes.

    It never scrolls sideways: the panel's minimum width is what its boxes need (plus room for the
    vertical scroll bar), so the main window's splitter or tab cannot make it narrower than that and
    no value or button ends up beyond a right edge the user would have to scroll to.
    """

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(title.replace(" ", "") + "Panel")
        self.title = title
        title_label = QLabel(title)
        title_label.setObjectName("panelTitle")
        font = title_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        title_label.setFont(font)
        self._title_label = title_label
        self._content = QWidget()
        self._content.setObjectName("panelContent")
        self._boxes = QVBoxLayout(self._content)
        self._boxes.setContentsMargins(0, 0, 0, 0)
        self._boxes.addStretch(1)
        self._scroll = scroll = QScrollArea()
        scroll.setObjectName("panelScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # The minimum width below keeps this bar hidden; "as needed" rather than "off" so that, should
        # a box ever outgrow it, its right edge stays reachable instead of being cut off.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        scroll.setWidget(self._content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(_MARGIN, _MARGIN, _MARGIN, _MARGIN)
        layout.addWidget(title_label)
        layout.addWidget(scroll, 1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        # A box whose minimum grows (a longer unbreakable text) re-asks the splitter for room.
        self._content.installEventFilter(self)

    def add_box(self, title: str, body: QWidget | None = None) -> QGroupBox:
        box = QGroupBox(title)
        layout = QVBoxLayout(box)
        layout.setContentsMargins(_MARGIN, _MARGIN, _MARGIN, _MARGIN)
        if body is not None:
            layout.addWidget(body)
        self._boxes.insertWidget(self._boxes.count() - 1, box)
        return box

    def set_title_shown(self, shown: bool) -> None:
        """Off where a tab already names the panel."""
        self._title_label.setVisible(shown)

    def scroll_area(self) -> QScrollArea:
        return self._scroll

    def content_minimum_width(self) -> int:
        """The narrowest width at which every box shows whole, scroll bar included."""
        bar = self._scroll.verticalScrollBar().sizeHint().width() or self.style().pixelMetric(
            QStyle.PixelMetric.PM_ScrollBarExtent
        )
        return self._content.minimumSizeHint().width() + bar + 2 * _MARGIN

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        # QScrollArea alone would claim almost no width, so the splitter could squeeze the boxes into
        # a sideways scroll; the height may shrink (the boxes scroll vertically).
        base = super().minimumSizeHint()
        return QSize(
            max(self.content_minimum_width(), self._title_label.minimumSizeHint().width()), base.height()
        )

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        # getattr: Qt can still deliver an event while the Python side is being torn down.
        if watched is getattr(self, "_content", None) and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return False
