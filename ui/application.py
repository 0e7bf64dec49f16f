"""Start-up of the LlamaScope window."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from PySide6.QtCore import QSettings
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from app import __version__
from app.resources import resource_path
from ui.gc_guard import GuiThreadGarbageCollector
from ui.main_window import MainWindow

APP_NAME = "LlamaScope"


def create_application(argv: Sequence[str]) -> QApplication:
    app = QApplication.instance() or QApplication(list(argv))
    assert isinstance(app, QApplication)
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(APP_NAME)
    app.setApplicationVersion(__version__)
    icon = resource_path("icons", "llamascope.svg")
    if os.path.exists(icon):
        app.setWindowIcon(QIcon(icon))
    return app


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_application(argv)
    initial_model = argv[1] if len(argv) > 1 else None
    collector = GuiThreadGarbageCollector(app)
    window = MainWindow(settings=QSettings(), initial_model=initial_model)
    window.show()
    try:
        return int(app.exec())
    finally:
        collector.stop()


if __name__ == "__main__":
    raise SystemExit(main())
