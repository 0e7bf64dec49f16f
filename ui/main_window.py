"""The main window: builds the four panels and the console, and wires their signals. Owns no state."""

from __future__ import annotations

import logging
import os

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QLabel, QMainWindow, QMessageBox, QSplitter, QWidget

from app import __version__
from app.bench.history import HistoryError, HistoryStore
from app.engine.types import GenerationRequest
from app.model.settings import SettingsError
from app.quant.workflow import QuantWorkflow
from app.telemetry.sampler import Sampler
from ui.engine_bridge import EngineBridge
from ui.inspector import ModelInspector
from ui.quality_bridge import QualityBridge
from ui.server_bridge import ServerBridge, connect_servers_box
from ui.telemetry_bridge import TelemetryBridge
from widgets.generation_console import GenerationConsole
from widgets.hardware_panel import HardwarePanel
from widgets.model_config_panel import ModelConfigPanel
from widgets.performance_panel import PerformancePanel
from widgets.quantization_panel import QuantizationPanel

log = logging.getLogger(__name__)


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
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("LlamaScope")
        self._settings = settings
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
        self.servers = ServerBridge(self.sampler, self.history, parent=self)
        connect_servers_box(self.servers, self.performance_panel.servers_box, self.bridge)
        self.console = GenerationConsole()

        self.panels_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.panels_splitter.setObjectName("panelsSplitter")
        for panel in (self.model_panel, self.hardware_panel, self.quantization_panel, self.performance_panel):
            self.panels_splitter.addWidget(panel)
        self.panels_splitter.setStretchFactor(0, 3)
        for i in (1, 2, 3):
            self.panels_splitter.setStretchFactor(i, 2)
        self.main_splitter = QSplitter(Qt.Orientation.Vertical)
        self.main_splitter.setObjectName("mainSplitter")
        self.main_splitter.addWidget(self.panels_splitter)
        self.main_splitter.addWidget(self.console)
        self.main_splitter.setStretchFactor(0, 3)
        self.main_splitter.setStretchFactor(1, 1)
        self.setCentralWidget(self.main_splitter)

        self.engine_status = QLabel("No model loaded")
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
        tune.apply_requested.connect(panel.apply_recommendations)
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
        quant.quantize_requested.connect(q.quantize)
        quant.base_requested.connect(q.measure_base)
        quant.measure_requested.connect(q.measure)
        quant.cancel_requested.connect(q.cancel)
        q.busy_changed.connect(quant.set_busy)
        q.engine_taken.connect(quant.set_engine_taken)  # a generation, load or benchmark holds the engine
        q.quantize_progressed.connect(quant.on_quantize_progressed)
        q.quantize_finished.connect(quant.on_quantize_finished)
        q.quantize_finished.connect(lambda result: self.model_panel.add_model_file(result.output_path))
        q.eval_progressed.connect(quant.on_eval_progressed)
        q.eval_finished.connect(quant.on_eval_finished)
        q.base_changed.connect(quant.on_base_changed)
        q.base_noted.connect(quant.on_base_noted)
        q.comparison_changed.connect(quant.on_comparison_changed)
        q.measurements_finished.connect(quant.on_measurements_finished)
        q.failed.connect(quant.on_failed)

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
        hw.apply_requested.connect(self.model_panel.apply_recommendations)
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
        self.bridge.request_generation(GenerationRequest(prompt, sampling, chat, system_prompt or None))

    def _on_tune_requested(self, request: object) -> None:
        model = self.model_panel.selected_path()
        if model is None:
            self.performance_panel.tune_box.on_failed("Select a model in Model Config first.")
            return
        self.bridge.request_tune(model, self.model_panel.load_settings(), request)  # type: ignore[arg-type]

    def _on_benchmark_requested(self, plan: object) -> None:
        self.bridge.request_benchmark(plan, self.history, self.sampler)  # type: ignore[arg-type]

    def _on_model_loaded(self, result: object) -> None:
        self.console.set_model_ready(True)
        self.engine_status.setText(f"Loaded: {self.model_panel.loaded_model_name()}")

    def _on_model_unloaded(self) -> None:
        self.console.set_model_ready(False)
        self.engine_status.setText("No model loaded")
        self.statusBar().showMessage("Model unloaded; its memory was freed.", 5000)

    def _on_model_lost(self, message: str) -> None:
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

    # ---- layout memory and shutdown ----------------------------------------------------------
    def _restore_layout(self) -> None:
        geometry = self._settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1600, 950)
        for splitter in (self.panels_splitter, self.main_splitter):
            state = self._settings.value(f"window/{splitter.objectName()}")
            if state is not None:
                splitter.restoreState(state)
        live = self._settings.value("performance/liveView")
        if live is not None:
            self.performance_panel.set_live_view(str(live).lower() == "true")

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt override)
        self._settings.setValue("window/geometry", self.saveGeometry())
        for splitter in (self.panels_splitter, self.main_splitter):
            self._settings.setValue(f"window/{splitter.objectName()}", splitter.saveState())
        self.model_panel.save_state()
        self._settings.setValue("performance/liveView", self.performance_panel.live_check.isChecked())
        # Stops a running generation or load (llama.cpp's abort callback) and joins the worker,
        # so no thread outlives the window.
        self.quality.shutdown()  # stops a quantization child process; evaluations stop with the engine
        self.bridge.shutdown()
        self.inspector.shutdown()
        self.servers.shutdown()  # watched servers, a server benchmark, the Prometheus endpoint
        self.telemetry.shutdown()  # stops and joins the sampler and the detection thread
        super().closeEvent(event)
