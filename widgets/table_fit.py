"""Tables that fit their box, and a dialog that shows a table whole.

A column of the main window is 340–460 px wide on a 1366-pixel screen. A table whose columns all
size themselves to their contents is wider than that as soon as a long configuration or verdict
arrives: it scrolls sideways inside a panel that may scroll sideways too. Here the short figures keep
their natural width, the long text columns ("elastic") share what is left and wrap, each cell's
tooltip holds its whole text, and "Open table…" shows the table whole in a window of its own.

Also `ElidedLabel`: one line that may be long (a file name, a path) without setting the column's
minimum width; it elides in the middle and its tooltip holds the whole text.
"""

from __future__ import annotations

from collections.abc import Sequence

import shiboken6
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QGuiApplication, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QSizePolicy,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)


def fit_columns(table: QTableWidget, elastic: Sequence[int], *, wrap: bool = True) -> None:
    """Short columns at their contents' width; the `elastic` columns share the rest of the table's
    width and wrap their text onto more lines (rows grow to hold them)."""
    header = table.horizontalHeader()
    header.setStretchLastSection(False)
    for col in range(table.columnCount()):
        mode = QHeaderView.ResizeMode.Stretch if col in elastic else QHeaderView.ResizeMode.ResizeToContents
        header.setSectionResizeMode(col, mode)
    header.setMinimumSectionSize(36)
    table.setWordWrap(wrap)
    table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
    if wrap:
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)


# A cell's text when the panel shows less of it (a verdict's head): the dialog shows this instead.
WHOLE_TEXT = Qt.ItemDataRole.UserRole + 1


def stacked(text: str) -> str:
    """A figure with its spread on two lines ("512.00\n± 3.10"): half the width in a narrow column."""
    return text.replace(" ± ", "\n± ")


def _header_text(table: QTableWidget, col: int) -> str:
    item = table.horizontalHeaderItem(col)
    return item.text() if item is not None else ""


def cell(text: str, tooltip: str = "") -> QTableWidgetItem:
    """A read-only cell whose tooltip starts with its whole text (it may be wrapped or elided)."""
    item = QTableWidgetItem(text)
    item.setToolTip(f"{text}\n\n{tooltip}" if tooltip and tooltip != text else text)
    return item


class TableDialog(QDialog):
    """A copy of a table at its full width, for reading or copying; it does not follow later rows."""

    def __init__(self, source: QTableWidget, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.table = QTableWidget(source.rowCount(), source.columnCount())
        self.table.setObjectName("wholeTable")
        self.table.setHorizontalHeaderLabels([_header_text(source, c) for c in range(source.columnCount())])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setWordWrap(False)
        for row in range(source.rowCount()):
            for col in range(source.columnCount()):
                item = source.item(row, col)
                if item is not None:
                    whole = item.data(WHOLE_TEXT)
                    text = whole if isinstance(whole, str) else item.text()
                    copy = QTableWidgetItem(text.replace("\n", " "))
                    copy.setToolTip(item.toolTip())
                    self.table.setItem(row, col, copy)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.resizeColumnsToContents()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(buttons)
        bar = self.table.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        margins = layout.contentsMargins()
        width = self.table.horizontalHeader().length() + 2 * self.table.frameWidth() + bar + margins.left()
        width += margins.right() + 8
        height = self.table.verticalHeader().length() + self.table.horizontalHeader().height() + 90
        screen = QGuiApplication.primaryScreen()
        room = screen.availableGeometry().size() * 0.9 if screen is not None else QSize(1200, 800)
        self.resize(min(max(width, 360), room.width()), min(max(height, 200), room.height()))


def show_table_whole(dialog: QDialog, table: QTableWidget, screen_of: QWidget) -> None:
    """Show `dialog`, whose `table` was just filled, with every column as wide as its contents (the
    whole table no wider than the screen `screen_of` is on, less room for the window frame) and up
    to 400 px of rows; a dialog already open is brought to the front."""
    table.resizeColumnsToContents()
    width = table.horizontalHeader().length() + table.frameWidth() * 2 + 4
    height = table.horizontalHeader().height() + table.verticalHeader().length() + table.frameWidth() * 2 + 4
    screen = screen_of.screen()
    if screen is not None:
        width = min(width, screen.availableGeometry().width() - 80)
    table.setMinimumSize(width, min(max(height, 80), 400))
    dialog.adjustSize()
    dialog.show()
    dialog.activateWindow()


class OpenTableButton(QToolButton):
    """A small "Open table…" button that shows a table whole in a dialog; off while it has no rows."""

    def __init__(self, table: QTableWidget, title: str) -> None:
        super().__init__()
        self._table = table
        self._title = title
        self.dialog: TableDialog | None = None  # the last one opened (tests read it)
        self.setText("Open table…")
        self.setObjectName("openTable_" + (table.objectName() or "table"))
        self.setToolTip(f"{title}: every column at full width in a window of its own")
        model = table.model()
        # Methods of this button, not lambdas: Qt drops the connections when the button goes.
        model.rowsInserted.connect(self._update)
        model.rowsRemoved.connect(self._update)
        model.modelReset.connect(self._update)
        self.clicked.connect(self.open_dialog)
        self._update()

    def _update(self) -> None:
        if shiboken6.isValid(self._table):
            self.setEnabled(self._table.rowCount() > 0)

    def open_dialog(self) -> TableDialog:
        dialog = TableDialog(self._table, self._title, self.window())
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.dialog = dialog
        dialog.show()
        return dialog


def open_table_button(table: QTableWidget, title: str) -> OpenTableButton:
    return OpenTableButton(table, title)


class ElidedLabel(QWidget):
    """One line of text that never widens its column: elided in the middle when narrow (a path keeps
    its start and its file name), the whole text in the tooltip."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._text = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setText(text)

    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:  # noqa: N802 (the QLabel name, so either fits)
        self._text = text
        self.setToolTip(text)
        self.updateGeometry()
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(
            min(self.fontMetrics().horizontalAdvance(self._text) + 4, 300), self.fontMetrics().height() + 2
        )

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(40, self.fontMetrics().height() + 2)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt override)
        painter = QPainter(self)
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        text = self.fontMetrics().elidedText(self._text, Qt.TextElideMode.ElideMiddle, self.width())
        painter.drawText(self.rect(), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)
        painter.end()


__all__ = [
    "ElidedLabel",
    "OpenTableButton",
    "TableDialog",
    "cell",
    "fit_columns",
    "show_table_whole",
    "open_table_button",
    "stacked",
]
