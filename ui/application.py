"""Start-up of the LlamaScope window."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence

from PySide6.QtCore import QLockFile, QSettings
from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication, QMessageBox

from app import __version__
from app.common.resources import resource_path
from ui.gc_guard import GuiThreadGarbageCollector
from ui.main_window import MainWindow

APP_NAME = "LlamaScope"
EXIT_ALREADY_RUNNING = 3
_HEADLESS_PLATFORMS = ("offscreen", "minimal")


DESKTOP_FILE_NAME = "llamascope"  # llamascope.desktop: Wayland's app id, the dock's icon and grouping


def create_application(argv: Sequence[str]) -> QApplication:
    # On X11 Qt names the window class (WM_CLASS, which task bars group and label by) after
    # argv[0]: started as `python -m cli` that is "__main__.py". The program's own name instead.
    qt_argv = [DESKTOP_FILE_NAME, *list(argv)[1:]]
    app = QApplication.instance() or QApplication(qt_argv)
    assert isinstance(app, QApplication)
    app.setApplicationName(APP_NAME)
    app.setDesktopFileName(DESKTOP_FILE_NAME)
    app.setOrganizationName(APP_NAME)
    app.setApplicationVersion(__version__)
    icon = resource_path("icons", "llamascope.svg")
    if os.path.exists(icon):
        app.setWindowIcon(QIcon(icon))
    return app


def instance_lock_path() -> str:
    """The lock one running LlamaScope holds, beside the history database it protects."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir(APP_NAME, appauthor=False), "instance.lock")


def acquire_instance_lock(path: str | None = None) -> QLockFile | None:
    """Lock out a second instance; None when another live process holds the lock.

    Two instances would overwrite each other's settings and interleave history writes. A lock
    left by a crashed instance is stale (its process is gone) and is taken over. When the lock
    cannot be created at all (read-only folder), LlamaScope runs unprotected rather than not at all.
    """
    path = path or instance_lock_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError:
        pass  # tryLock below fails with a reason other than "held", and we run unprotected
    lock = QLockFile(path)
    lock.setStaleLockTime(0)  # stale only when its owner is dead, however long the app has run
    if lock.tryLock(100):
        return lock
    if lock.error() == QLockFile.LockError.LockFailedError:
        return None
    logging.getLogger(__name__).warning("cannot create the instance lock %s; running without it", path)
    return lock


def _refuse_second_instance() -> int:
    message = (
        "LlamaScope is already running. Close the other window first: two instances would "
        "overwrite each other's settings and history."
    )
    print(f"llamascope: {message}", file=sys.stderr)
    if QGuiApplication.platformName() not in _HEADLESS_PLATFORMS:
        QMessageBox.warning(None, APP_NAME, message)
    return EXIT_ALREADY_RUNNING


def start_sweeping_leftovers() -> threading.Thread:
    """Delete, off the GUI thread, the hidden files that quantizations left when an earlier
    LlamaScope (window or CLI) died mid-way; files that a running LlamaScope writes are kept."""
    from app.quant.partials import sweep_leftover_partials

    thread = threading.Thread(target=sweep_leftover_partials, name="llamascope-sweep", daemon=True)
    thread.start()
    return thread


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_application(argv)
    instance_lock = acquire_instance_lock()
    if instance_lock is None:
        return _refuse_second_instance()
    start_sweeping_leftovers()
    initial_model = argv[1] if len(argv) > 1 else None
    collector = GuiThreadGarbageCollector(app)
    window = MainWindow(settings=QSettings(), initial_model=initial_model)
    window.show()
    try:
        return int(app.exec())
    finally:
        collector.stop()
        instance_lock.unlock()


if __name__ == "__main__":
    raise SystemExit(main())
