"""The main window: builds the four panels and the console, and wires their signals. Owns no state."""

from __future__ import annotations

import enum
import logging
import os

from PySide6.QtCore import QRect, QSettings, QSize, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeySequence, QResizeEvent, QShowEvent
from PySide6.QtWidgets import (
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QWidget,
)

from app import __version__
from app.bench.history import HistoryError, HistoryStore
from app.common.formatting import format_bytes
from app.engine.types import GenerationRequest, LoadResult
from app.model.settings import SettingsError
from app.quant.workflow import QuantWorkflow
from app.telemetry.sampler import Sampler
from ui.advice_bridge import AdviceBridge, connect_advice
from ui.engine_bridge import EngineBridge
from ui.inspector import ModelInspector
from ui.quality_bridge import QualityBridge, connect_quantization_panel
from ui.server_bridge import ServerBridge, connect_servers_box
from ui.telemetry_bridge import TelemetryBridge
from widgets.generation_console import GenerationConsole
from widgets.hardware_panel import HardwarePanel
from widgets.model_config_panel import ORIGIN_QUANTIZED, ModelConfigPanel
from widgets.performance_panel import PerformancePanel
from widgets.quantization_panel import QuantizationPanel
from widgets.wheel_guard import install_wheel_guard

log = logging.getLogger(__name__)

# Four columns side by side need about this much width: at 1600 px each column gets ~390 px, what
# the widest panel's boxes need (tests/gui/test_window_fit.py holds them to it). Below it the panels
# go into two rows of tabs, side by side (see LayoutMode.TABS).
FOUR_COLUMNS_MIN_WIDTH = 1600
DEFAULT_SIZE = QSize(1600, 950)
# The smallest window that still shows a panel, its buttons and a few console lines; on a smaller
# screen the screen wins.
USABLE_MIN_SIZE = QSize(960, 600)
# Room for the window manager's title bar and borders, which Qt knows only once the window is shown:
# without it a window as tall as the screen's free area would put its bottom edge (the console and
# the status bar) under the task bar.
DECORATION_ALLOWANCE = QSize(16, 40)


HEADLESS_SCREEN = QRect(0, 0, 1920, 1080)
NO_MODEL_STATUS = "No model loaded"


def loaded_status_text(result: LoadResult) -> str:
    """The status bar's name for what the engine holds: "Loaded: SmolLM2 135M · Q4_1 · 93.8 MiB"."""
    model = result.model
    return f"Loaded: {model.display_name} · {model.file_type_label} · {format_bytes(model.file_size_bytes)}"


def _parse_rect(value: object) -> QRect | None:
    """A remembered "x,y,width,height"; None when missing or damaged."""
    try:
        x, y, w, h = (int(part) for part in str(value).split(","))
    except ValueError:
        return None
    return QRect(x, y, w, h) if w > 0 and h > 0 else None


class LayoutMode(enum.Enum):
    """How the four panels share the window's width.

    COLUMNS: the specified layout, four columns side by side, when the window is wide enough.
    TABS: two tab stacks side by side (Model Config | Hardware, and Quantization | Performance).
    Chosen over a single tab stack, which would show one panel on a 1366 px screen and leave most
    of its width empty, and over a 2x2 grid, which on a 768 px screen leaves each panel about 250 px
    of height above the console: too little for a plot or a table. Two stacks give each visible
    panel ~680 px of width and the full height, and any panel of the left stack can be watched next
    to any of the right one (e.g. Model Config beside Performance while a benchmark runs).
    """

    COLUMNS = "columns"
    TABS = "tabs"


def layout_mode_for_width(width: int) -> LayoutMode:
    return LayoutMode.COLUMNS if width >= FOUR_COLUMNS_MIN_WIDTH else LayoutMode.TABS


def _logits_folder() -> str:
    import platformdirs

    return os.path.join(platformdirs.user_cache_dir("LlamaScope", appauthor=False), "kld-base")


def _open_history() -> HistoryStore | None:
    try:
        return HistoryStore()
    except HistoryError as exc:  # the app still works; runs are just not kept
        log.warning("history disabled: %s", exc)
        return None


class MainWindow(QMainWindow):
    """Four panels side by side over the generation console."""

    def __init__(
        self,
        settings: QSettings,
        bridge: EngineBridge | None = None,
        initial_model: str | None = None,
        history: HistoryStore | None = None,
        parent: QWidget | None = None,
        available_geometry: QRect | None = None,
    ) -> None:
        """`available_geometry` stands in for the screen's free area (tests size the window for a
        screen they do not have); by default the screen's own, read when needed."""
        super().__init__(parent)
        install_wheel_guard()  # before any panel exists: the wheel scrolls panels, not spin boxes
        self.setWindowTitle("LlamaScope")
        self._settings = settings
        self._available_geometry = available_geometry
        self._layout_mode: LayoutMode | None = None
        self._shown_once = False
        self.bridge = bridge or EngineBridge(parent=self)
        self.inspector = ModelInspector(parent=self)
        self.sampler = Sampler()  # public: the Performance panel attaches a TelemetryRecorder to it
        self.telemetry = TelemetryBridge(self.sampler, parent=self)

        self.model_panel = ModelConfigPanel(settings)
        self.hardware_panel = HardwarePanel()
        self.quality = QualityBridge(self.bridge.engine, QuantWorkflow(_logits_folder()), parent=self)
        self.quantization_panel = QuantizationPanel()
        self.history = history or _open_history()
        self.performance_panel = PerformancePanel(self.history)
        self.advice = AdviceBridge(self.bridge.engine, self.history, parent=self)  # matrix and advisor
        self.servers = ServerBridge(self.sampler, self.history, parent=self)
        connect_servers_box(self.servers, self.performance_panel.servers_box, self.bridge)
        self.console = GenerationConsole()

        self.panels = (self.model_panel, self.hardware_panel, self.quantization_panel, self.performance_panel)
        # Both layouts exist from the start; switching moves the same four panel widgets between
        # them, so every edit, plot, table and running job stays as it is.
        self.panels_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.panels_splitter.setObjectName("panelsSplitter")
        self.panels_splitter.setChildrenCollapsible(False)
        self.left_tabs = QTabWidget()
        self.left_tabs.setObjectName("leftTabs")
        self.right_tabs = QTabWidget()
        self.right_tabs.setObjectName("rightTabs")
        for tabs in (self.left_tabs, self.right_tabs):
            tabs.setDocumentMode(True)
        self.tabs_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.tabs_splitter.setObjectName("tabsSplitter")
        self.tabs_splitter.setChildrenCollapsible(False)
        self.tabs_splitter.addWidget(self.left_tabs)
        self.tabs_splitter.addWidget(self.right_tabs)
        self.panels_stack = QStackedWidget()
        self.panels_stack.setObjectName("panelsStack")
        self.panels_stack.addWidget(self.panels_splitter)
        self.panels_stack.addWidget(self.tabs_splitter)
        self.main_splitter = QSplitter(Qt.Orientation.Vertical)
        self.main_splitter.setObjectName("mainSplitter")
        self.main_splitter.setChildrenCollapsible(False)
        self.main_splitter.addWidget(self.panels_stack)
        self.main_splitter.addWidget(self.console)
        self.main_splitter.setStretchFactor(0, 3)
        self.main_splitter.setStretchFactor(1, 1)
        self.setCentralWidget(self.main_splitter)
        self.set_layout_mode(LayoutMode.TABS)  # until the window has its size (_restore_layout)

        self.engine_status = QLabel(NO_MODEL_STATUS)
        self.engine_status.setObjectName("engineStatus")
        self.build_warning: QMessageBox | None = None  # shown once if the build check saw a crash
        self.statusBar().addPermanentWidget(self.engine_status)
        self._build_menu()
        self._wire()
        self._wire_hardware()
        self._wire_quantization()
        self._restore_layout()
        self.model_panel.select_initial_model(initial_model)
        self.inspector.request_platform()
        self.inspector.request_bandwidth()

    # ---- construction ------------------------------------------------------------------------
    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self._add_action(
            file_menu, "&Open Model…", QKeySequence.StandardKey.Open, self.model_panel.open_file_dialog
        )
        self._add_action(file_menu, "Add Model &Folder…", None, self.model_panel.add_folder_dialog)
        file_menu.addSeparator()
        self._add_action(file_menu, "&Quit", QKeySequence.StandardKey.Quit, self.close)
        model_menu = self.menuBar().addMenu("&Model")
        self._add_action(model_menu, "&Load", QKeySequence("Ctrl+L"), self.model_panel.request_load)
        self._add_action(model_menu, "&Unload", QKeySequence("Ctrl+U"), self.model_panel.request_unload)
        # Stops what the Model Config, console or Performance panel started; the Quantization panel's
        # work has its own Cancel.
        self._add_action(model_menu, "&Cancel / Stop", None, self.bridge.cancel)
        model_menu.addSeparator()
        self._add_action(
            model_menu, "Run &Benchmark", QKeySequence("Ctrl+B"), self.performance_panel.request_benchmark
        )
        help_menu = self.menuBar().addMenu("&Help")
        self._add_action(help_menu, "&About LlamaScope", None, self._show_about)

    def _add_action(self, menu, text, shortcut, slot) -> QAction:  # type: ignore[no-untyped-def]
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _wire(self) -> None:
        b, panel, console = self.bridge, self.model_panel, self.console
        panel.inspection_requested.connect(self.inspector.request)
        self.inspector.inspected.connect(panel.on_model_inspected)
        self.inspector.missing.connect(panel.on_model_missing)
        self.inspector.crash_record_read.connect(panel.on_crash_record_read)
        self.inspector.platform_read.connect(panel.set_platform_text)
        panel.load_requested.connect(b.request_load)
        panel.unload_requested.connect(b.request_unload)
        panel.cancel_requested.connect(b.cancel)
        b.load_progressed.connect(panel.on_load_progressed)
        b.load_finished.connect(panel.on_load_finished)
        b.load_cancelled.connect(panel.on_load_cancelled)
        b.unloaded.connect(panel.on_unloaded)
        b.busy_changed.connect(panel.set_busy)
        b.busy_changed.connect(console.set_busy)
        # The Quantization panel's evaluations hold the same engine: these buttons are off meanwhile.
        b.engine_taken.connect(panel.set_engine_taken)
        b.engine_taken.connect(console.set_engine_taken)
        b.engine_taken.connect(self.performance_panel.set_engine_taken)
        b.load_finished.connect(self._on_model_loaded)
        b.unloaded.connect(self._on_model_unloaded)
        b.model_lost.connect(panel.on_model_lost)
        b.model_lost.connect(self._on_model_lost)
        b.operation_failed.connect(self._on_operation_failed)

        perf = self.performance_panel
        perf.set_plan_source(lambda: (panel.selected_path(), panel.load_settings()))
        b.record_generation(self.history)
        perf.benchmark_requested.connect(self._on_benchmark_requested)
        tune = perf.tune_box
        tune.tune_requested.connect(self._on_tune_requested)
        tune.stop_requested.connect(b.cancel)
        tune.apply_requested.connect(lambda values: panel.apply_recommendations(values, "Auto-Tune"))
        panel.settings_applied.connect(lambda message: self.statusBar().showMessage(message, 15000))
        tune.save_profile_requested.connect(panel.save_profile)
        b.tune_progressed.connect(tune.on_progress)
        b.tune_trial.connect(tune.on_trial)
        b.tune_finished.connect(tune.on_finished)
        score = perf.score_box
        score.score_requested.connect(lambda plan: b.request_localscore(plan, self.history, self.sampler))
        score.stop_requested.connect(b.cancel)
        b.score_progressed.connect(score.on_progress)
        b.score_test.connect(score.on_test)
        b.score_finished.connect(score.on_finished)
        b.score_finished.connect(lambda _outcome: perf.refresh_history())
        perf.stop_requested.connect(b.cancel)
        b.benchmark_progressed.connect(perf.on_benchmark_progressed)
        b.benchmark_result.connect(perf.on_benchmark_result)
        b.benchmark_finished.connect(perf.on_benchmark_finished)
        b.busy_changed.connect(perf.set_busy)
        b.load_finished.connect(perf.set_loaded)
        b.unloaded.connect(lambda: perf.set_loaded(None))
        b.generation_started.connect(perf.on_generation_started)
        b.generation_finished.connect(perf.on_generation_finished)
        self.inspector.bandwidth_measured.connect(perf.set_bandwidth)

        console.generation_requested.connect(self._on_generation_requested)
        console.stop_requested.connect(b.cancel)
        console.tokenize_requested.connect(b.request_tokenize)
        b.generation_started.connect(console.on_generation_started)
        b.generation_finished.connect(console.on_generation_finished)
        b.tokenized.connect(console.on_tokenized)

    def _wire_quantization(self) -> None:
        q, quant = self.quality, self.quantization_panel
        self.model_panel.model_info_changed.connect(quant.set_source)
        self.inspector.quant_types_read.connect(quant.set_quant_types)
        self.inspector.request_quant_types()

        # Each new file is listed and remembered, without taking the selection (and with it the
        # quantization's source) from the model the user works on.
        def add_model(path: str) -> None:
            self.model_panel.add_model(path, ORIGIN_QUANTIZED, select=False)

        connect_quantization_panel(q, quant, add_model=add_model)
        connect_advice(self.advice, quant, add_model=add_model)  # the advice's pick, the same way

    def _wire_hardware(self) -> None:
        t, hw = self.telemetry, self.hardware_panel
        t.snapshot_received.connect(hw.on_snapshot)
        t.snapshot_received.connect(self.performance_panel.on_sample)
        t.hardware_detected.connect(hw.on_hardware_detected)
        t.hardware_detected.connect(self.performance_panel.set_hardware)
        t.detection_failed.connect(hw.on_detection_failed)
        t.hardware_detected.connect(self._on_hardware_detected)
        t.interval_changed.connect(hw.set_sampling_interval)
        hw.detection_requested.connect(t.request_detection)
        hw.apply_requested.connect(
            lambda values: self.model_panel.apply_recommendations(values, "Hardware advice")
        )
        self.model_panel.model_info_changed.connect(hw.set_model)
        t.watch_window(self)
        t.start()
        t.request_detection()

    # ---- slots -------------------------------------------------------------------------------
    def _on_generation_requested(self, prompt: str, chat: bool, system_prompt: str) -> None:
        try:
            sampling = self.model_panel.sampling_settings()
        except SettingsError as exc:
            self.console.on_generation_failed(str(exc))
            return
        request = GenerationRequest(prompt, sampling, chat, system_prompt or None)
        # In chat mode the console adds the earlier turns and keeps the KV cache between them.
        self.bridge.request_generation(self.console.chat_request(request, self.bridge.engine.loaded))

    def _on_tune_requested(self, request: object) -> None:
        model = self.model_panel.selected_path()
        if model is None:
            self.performance_panel.tune_box.on_failed("Select a model in Model Config first.")
            return
        self.bridge.request_tune(model, self.model_panel.load_settings(), request)  # type: ignore[arg-type]

    def _on_benchmark_requested(self, plan: object) -> None:
        self.bridge.request_benchmark(plan, self.history, self.sampler)  # type: ignore[arg-type]

    def _on_model_loaded(self, result: LoadResult) -> None:
        self.console.set_model_ready(True)
        self.engine_status.setText(loaded_status_text(result))
        self.engine_status.setToolTip(f"{result.model.path}\ncontext {result.n_ctx:,} tokens")

    def _on_model_unloaded(self) -> None:
        self.console.set_model_ready(False)
        self.engine_status.setText(NO_MODEL_STATUS)
        self.engine_status.setToolTip("Select a model in Model Config and press Load (Ctrl+L)")
        self.statusBar().showMessage("Model unloaded; its memory was freed.", 5000)

    def _on_model_lost(self, message: str) -> None:
        self.console.set_model_ready(False)
        self.engine_status.setText(NO_MODEL_STATUS)
        self.engine_status.setToolTip(message)
        self.statusBar().showMessage(message.splitlines()[0], 15000)

    def _on_operation_failed(self, operation: str, message: str) -> None:
        if operation == "load":
            self.model_panel.on_load_failed(message)
            path = self.model_panel.selected_path()
            if path is not None:
                self.inspector.request(path)  # a crash at load is now on record: mark the model
        elif operation == "generate":
            self.console.on_generation_failed(message)
            self.performance_panel.on_generation_failed()
        elif operation == "benchmark":
            self.performance_panel.on_benchmark_failed(message)
        elif operation == "tune":
            self.performance_panel.tune_box.on_failed(message)
        elif operation == "score":
            self.performance_panel.score_box.on_failed(message)
        elif operation == "tokenize":
            self.console.token_count_label.setText(f"Not tokenized: {message}")
        self.statusBar().showMessage(f"{operation.capitalize()} failed: {message}", 10000)

    def _on_hardware_detected(self, report: object) -> None:
        """Say at once, before any load, when this llama.cpp build crashed the build check."""
        verdict = getattr(report, "build_check", None)
        if verdict is None or not verdict.crashed or self.build_warning is not None:
            return
        self.engine_status.setText("llama.cpp build crashes on this CPU — see Hardware")
        box = QMessageBox(
            QMessageBox.Icon.Critical,
            "This llama.cpp build crashes on this CPU",
            verdict.message,
            QMessageBox.StandardButton.Ok,
            self,
        )
        box.setDetailedText("\n".join(verdict.log_tail) or "llama.cpp logged nothing.")
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # copy the command
        box.open()  # window-modal, does not block the event loop
        self.build_warning = box

    def _show_about(self) -> None:
        QMessageBox.about(
            self,
            "About LlamaScope",
            f"<b>LlamaScope {__version__}</b><p>Run, measure and tune local LLMs with llama.cpp.</p>"
            f"<p>{self.model_panel.platform_text()}</p>",
        )

    # ---- layout: the screen, the two modes, memory ---------------------------------------------
    def available_geometry(self) -> QRect:
        """The free area (without task bars) of the screen the window is on."""
        if self._available_geometry is not None:
            return QRect(self._available_geometry)
        if QGuiApplication.platformName() == "offscreen":
            # A headless run (the self-test, the test suite) has a nominal 800x600 screen nobody
            # looks at: lay the window out as on a common full-HD screen, four columns.
            return QRect(HEADLESS_SCREEN)
        screen = QGuiApplication.screenAt(self.geometry().center()) or self.screen()
        screen = screen or QGuiApplication.primaryScreen()
        return screen.availableGeometry() if screen is not None else QRect(0, 0, 1366, 768)

    def layout_mode(self) -> LayoutMode:
        assert self._layout_mode is not None
        return self._layout_mode

    def set_layout_mode(self, mode: LayoutMode) -> None:
        """Move the four panels into the columns or into the two tab stacks; no panel is rebuilt."""
        if mode is self._layout_mode:
            return
        self._layout_mode = mode
        if mode is LayoutMode.COLUMNS:
            for tabs in (self.left_tabs, self.right_tabs):
                if tabs.count():
                    tabs.setProperty("rememberedIndex", tabs.currentIndex())
                while tabs.count():
                    tabs.removeTab(0)
            for i, panel in enumerate(self.panels):
                self.panels_splitter.insertWidget(i, panel)
                panel.set_title_shown(True)
                panel.show()  # a tab that was not current is hidden
            self.panels_splitter.setStretchFactor(0, 3)
            for i in (1, 2, 3):
                self.panels_splitter.setStretchFactor(i, 2)
            self.panels_stack.setCurrentWidget(self.panels_splitter)
        else:
            for tabs, pair in ((self.left_tabs, self.panels[:2]), (self.right_tabs, self.panels[2:])):
                current = tabs.property("rememberedIndex")
                for panel in pair:
                    tabs.addTab(panel, panel.title)  # the tab stack shows only its current page
                    panel.set_title_shown(False)  # the tab names it
                tabs.setCurrentIndex(int(current) if current is not None else 0)
            self.panels_stack.setCurrentWidget(self.tabs_splitter)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt override)
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            # Now the window manager's frame is known: if title bar and borders push the window
            # over the screen's edge, shrink it by what they take.
            QTimer.singleShot(0, self, self._refit_if_framed_outside)

    def _refit_if_framed_outside(self) -> None:
        if not self.isMaximized() and not self.isFullScreen():
            if not self.available_geometry().contains(self.frameGeometry()):
                self.fit_to_screen()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        self.set_layout_mode(layout_mode_for_width(event.size().width()))
        super().resizeEvent(event)

    def _largest_size(self) -> QSize:
        """The biggest window (without its frame) that fits the screen's free area."""
        avail = self.available_geometry()
        frame = self.frameGeometry().size() - self.geometry().size()
        if self.isVisible() and frame.height() > 0:
            extra = frame  # the real decorations, once the window manager has framed the window
        elif self._available_geometry is not None:
            extra = QSize(0, 0)  # a stand-in screen has no window manager
        else:
            extra = DECORATION_ALLOWANCE
        return QSize(max(1, avail.width() - extra.width()), max(1, avail.height() - extra.height()))

    def fit_to_screen(self, size: QSize | None = None) -> None:
        """Resize to `size` (default: the current size), clamped to the screen and to a usable
        minimum, and move the window into the screen's free area."""
        largest = self._largest_size()
        wanted = size or self.size()
        low = USABLE_MIN_SIZE.boundedTo(largest)
        width = max(low.width(), min(wanted.width(), largest.width()))
        height = max(low.height(), min(wanted.height(), largest.height()))
        # The mode first: the columns' minimum width would keep the window from getting narrower.
        self.set_layout_mode(layout_mode_for_width(width))
        self.resize(width, height)
        avail = self.available_geometry()
        frame = self.frameGeometry()
        x = min(max(frame.x(), avail.left()), avail.left() + max(0, avail.width() - frame.width()))
        y = min(max(frame.y(), avail.top()), avail.top() + max(0, avail.height() - frame.height()))
        self.move(x, y)

    def _center_on_screen(self) -> None:
        avail, frame = self.available_geometry(), self.frameGeometry()
        self.move(
            avail.left() + max(0, (avail.width() - frame.width()) // 2),
            avail.top() + max(0, (avail.height() - frame.height()) // 2),
        )

    def _restore_layout(self) -> None:
        avail = self.available_geometry()
        rect = _parse_rect(self._settings.value("window/rect"))
        saved_screen = self._settings.value("window/screenSize")
        same_screen = saved_screen is not None and str(saved_screen) == f"{avail.width()}x{avail.height()}"
        # Qt's own restoreGeometry squeezed a window saved on a bigger screen into an odd small one
        # (1920x1080 came back as 1052x512 on 1366x768): on another screen, start as on a first run;
        # on the same screen, where it was, clamped to the screen.
        if rect is not None and same_screen:
            self.move(rect.topLeft())
            self.fit_to_screen(rect.size())
        else:
            self.fit_to_screen(DEFAULT_SIZE)
            self._center_on_screen()
        if same_screen and str(self._settings.value("window/maximized", "false")).lower() == "true":
            self.setWindowState(self.windowState() | Qt.WindowState.WindowMaximized)
        for tabs in (self.left_tabs, self.right_tabs):
            index = self._settings.value(f"window/{tabs.objectName()}")
            if index is not None and str(index).isdigit():
                tabs.setProperty("rememberedIndex", min(int(str(index)), 1))
                if tabs.count():
                    tabs.setCurrentIndex(min(int(str(index)), tabs.count() - 1))
        for splitter in (self.panels_splitter, self.tabs_splitter, self.main_splitter):
            state = self._settings.value(f"window/{splitter.objectName()}")
            if state is not None:
                splitter.restoreState(state)
        live = self._settings.value("performance/liveView")
        if live is not None:
            self.performance_panel.set_live_view(str(live).lower() == "true")

    def save_layout(self) -> None:
        avail = self.available_geometry()
        normal = self.normalGeometry() if self.isMaximized() else self.geometry()
        self._settings.setValue(
            "window/rect", f"{normal.x()},{normal.y()},{normal.width()},{normal.height()}"
        )
        self._settings.setValue("window/maximized", self.isMaximized())
        self._settings.setValue("window/screenSize", f"{avail.width()}x{avail.height()}")
        for splitter in (self.panels_splitter, self.tabs_splitter, self.main_splitter):
            self._settings.setValue(f"window/{splitter.objectName()}", splitter.saveState())
        for tabs in (self.left_tabs, self.right_tabs):
            index = tabs.currentIndex() if tabs.count() else tabs.property("rememberedIndex")
            if index is not None:
                self._settings.setValue(f"window/{tabs.objectName()}", int(index))

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt override)
        self.save_layout()
        self.model_panel.save_state()
        self._settings.setValue("performance/liveView", self.performance_panel.live_check.isChecked())
        # Stops a running generation or load (llama.cpp's abort callback) and joins the worker,
        # so no thread outlives the window.
        self.quality.shutdown()  # stops a quantization child process; evaluations stop with the engine
        self.advice.shutdown()  # an importance matrix, an advice (its thread, its quantizer child)
        self.bridge.shutdown()
        self.inspector.shutdown()
        self.servers.shutdown()  # watched servers, a server benchmark, the Prometheus endpoint
        self.telemetry.shutdown()  # stops and joins the sampler and the detection thread
        super().closeEvent(event)
