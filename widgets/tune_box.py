"""Auto-tune controls and results for the Performance panel's Optimization box."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from app.model.settings import LoadSettings
from app.telemetry.hardware import HardwareReport
from app.tune.request import MIN_TRIALS, TuneRequest
from app.tune.results import TrialRecord, TuneProgress, TuneResult
from app.tune.space import Objective
from widgets.chart import install_chart_behaviour
from widgets.live_plot import cache_axes
from widgets.table_fit import cell, fit_columns, open_table_button

# Checkbox label -> the LoadSettings fields it lets the tuner vary.
PARAMETER_GROUPS: dict[str, tuple[str, ...]] = {
    "Threads": ("n_threads", "n_threads_batch"),
    "Batch sizes": ("n_batch", "n_ubatch"),
    "Flash attention": ("flash_attn",),
    "KV cache types": ("type_k", "type_v"),
    "GPU layers": ("n_gpu_layers",),
    "mmap / mlock / NUMA": ("use_mmap", "use_mlock", "numa"),
}


def recommendation_text(result: TuneResult) -> str:
    """What to do with the result, in words: the search's winner can be a lucky measurement."""
    if result.gain is None:
        return "not known: the final comparison with the default did not run"
    if result.proven:
        return "apply the best settings: faster than the default beyond the noise of this machine"
    if result.gain.significant:  # significantly slower: the search's pick lost the re-measurement
        return "keep the default: it was faster when both were measured again"
    return (
        "the default is as fast within the noise of this machine; applying the best settings "
        "does no harm but is not proven to help"
    )


# Ticked at the start; "GPU layers" only once the hardware detection says this build can offload.
DEFAULT_GROUPS = ("Threads", "Batch sizes", "Flash attention", "KV cache types")


def objective_choices() -> list[tuple[str, str]]:
    """(label, Objective text) of the three objectives, the label naming what a trial measures."""
    tg, pp, mix = (Objective.parse(kind) for kind in ("tg", "pp", "mix"))
    return [
        (f"Generation speed ({tg.key})", tg.spec),
        (f"Prompt speed ({pp.key})", pp.spec),
        (f"Chat turn: {mix.prompt_tokens} prompt + {mix.gen_tokens} generated", mix.spec),
    ]


def gpu_layers_unavailable(report: HardwareReport) -> str:
    """Why GPU layers cannot be tuned with this build on this machine ("" when they can)."""
    if report.build is None:
        return "the llama.cpp build could not be read" + (
            f" ({report.build_error})" if report.build_error else ""
        )
    if not report.build.gpu_offload:
        return "this llama.cpp build is CPU-only (no GPU offload)"
    if not report.gpus:
        return "llama.cpp lists no GPU to put layers on"
    return ""


def _group_tip(label: str) -> str:
    return (
        "Let the tuner vary "
        + ", ".join(PARAMETER_GROUPS[label])
        + " (only values this machine and build support are tried)"
    )


_RUN_TIP = "Measure configurations of the selected model and find the fastest; nothing else runs meanwhile"


class TuneBox(QWidget):
    tune_requested = Signal(object)  # TuneRequest
    stop_requested = Signal()
    apply_requested = Signal(object)  # dict of load settings for Model Config
    save_profile_requested = Signal(str, object)  # profile name, LoadSettings

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._result: TuneResult | None = None
        self._scores: list[float] = []
        self._xs: list[int] = []  # the measured trials' numbers as the table shows them (from 1)
        self._requested: int | None = None  # the trial budget of the running or last session
        form = QFormLayout()
        self.objective = QComboBox()
        # The labels name the test a trial runs, read from the objective itself (tg32, not tg 128).
        for text, spec in objective_choices():
            self.objective.addItem(text, spec)
        self.objective.setToolTip("What 'fastest' means: the chat mix minimises the time of a whole turn")
        # Narrower than its longest choice (the list still shows it whole), so the column stays slim.
        self.objective.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.objective.setMinimumContentsLength(18)
        self.trials = QSpinBox()
        self.trials.setRange(MIN_TRIALS, 500)
        self.trials.setValue(12)
        self.trials.setToolTip(
            "Configurations to measure (Optuna TPE for numbers, a grid for the rest); the first trial "
            f"measures the current settings, so at least {MIN_TRIALS}"
        )
        self.budget = QSpinBox()
        self.budget.setRange(0, 24 * 60)
        self.budget.setSuffix(" min")
        self.budget.setSpecialValueText("no limit")
        self.budget.setToolTip("Stop searching after this long (the final comparison still runs)")
        form.addRow("Objective", self.objective)
        form.addRow("Trials", self.trials)
        form.addRow("Time budget", self.budget)
        self.param_checks: dict[str, QCheckBox] = {}
        params = QWidget()
        params_layout = QHBoxLayout(params)
        params_layout.setContentsMargins(0, 0, 0, 0)
        column = QVBoxLayout()
        for i, label in enumerate(PARAMETER_GROUPS):
            check = QCheckBox(label)
            check.setChecked(label in DEFAULT_GROUPS)
            check.setToolTip(_group_tip(label))
            self.param_checks[label] = check
            column.addWidget(check)
            if i == 2:
                params_layout.addLayout(column)
                column = QVBoxLayout()
        params_layout.addLayout(column)
        form.addRow("Tune", params)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # checkboxes under "Tune" when narrow

        self.run_button = QPushButton("Auto-Tune")
        self.run_button.setObjectName("tuneRun")
        self.run_button.setToolTip(_RUN_TIP)
        self.run_button.clicked.connect(self._on_run)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop searching; the best configuration so far is kept")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.plot = pg.PlotWidget(background=None)
        cache_axes(self.plot.getPlotItem())  # redrawn live while work runs
        self.plot.setMinimumHeight(110)
        self.plot.setMaximumHeight(200)  # pyqtgraph's size hint would take a screen's height of the column
        self.plot.setLabel("left", "score (t/s)")
        self.plot.setLabel("bottom", "trial")
        # The wheel scrolls the panel unless the chart was clicked or Ctrl is held; trials are counted.
        self.chart = install_chart_behaviour(self.plot, non_negative_y=True, integer_x=True)
        self.trial_points = self.plot.plot([], [], pen=None, symbol="o", symbolSize=5)
        self.best_line = self.plot.plot([], [], pen=pg.mkPen(width=1))
        self.table = QTableWidget(0, 4)
        self.table.setObjectName("tuneTrials")
        self.table.setHorizontalHeaderLabels(["#", "settings", "t/s", "state"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        # "#" and t/s at their width; the settings and the state (a pruned trial says why) share the
        # rest and wrap, never narrower than their header ("settings" was once clipped to "etting").
        fit_columns(self.table, elastic=(1, 3))
        self.table.setMinimumHeight(110)
        self.table_button = open_table_button(self.table, "Auto-Tune trials")
        self.result_label = QLabel("No tuning result yet.")
        self.result_label.setObjectName("tuneResult")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.apply_button = QPushButton("Apply to Model Config")
        self.apply_button.setToolTip("Set the best configuration's load settings (a reload applies them)")
        self.apply_button.clicked.connect(self._on_apply)
        self.profile_button = QPushButton("Save as profile…")
        self.profile_button.clicked.connect(self._on_save_profile)
        self.flags_button = QPushButton("Copy flags")
        self.flags_button.setToolTip("Copy the llama-server / llama-cli flags of the best configuration")
        self.flags_button.clicked.connect(self._on_copy_flags)
        result_buttons = QGridLayout()  # two rows: one would widen the whole column
        for b in (self.apply_button, self.profile_button, self.flags_button):
            b.setEnabled(False)
        result_buttons.addWidget(self.apply_button, 0, 0, 1, 2)
        result_buttons.addWidget(self.profile_button, 1, 0)
        result_buttons.addWidget(self.flags_button, 1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addWidget(self.table)
        layout.addWidget(self.table_button, 0, Qt.AlignmentFlag.AlignRight)
        layout.addWidget(self.result_label)
        layout.addLayout(result_buttons)

    def set_hardware(self, report: HardwareReport) -> None:
        """Offer only what this llama.cpp build can change: GPU layers need a build with GPU offload
        and a GPU in its device list (the tuner would try only 0 layers otherwise)."""
        check = self.param_checks["GPU layers"]
        why = gpu_layers_unavailable(report)
        check.setEnabled(not why)
        check.setChecked(not why)
        check.setToolTip(f"Not on this machine: {why}" if why else _group_tip("GPU layers"))

    def request(self) -> TuneRequest:
        params = tuple(
            f
            for label, check in self.param_checks.items()
            if check.isChecked()
            for f in PARAMETER_GROUPS[label]
        )
        return TuneRequest(
            self.objective.currentData(), self.trials.value(), self.budget.value() * 60.0 or None, params
        )

    def set_busy(self, busy: bool, reason: str = "") -> None:
        """The engine is busy (`reason`: why, when another panel's work holds it) or free."""
        self.run_button.setEnabled(not busy)
        self.run_button.setToolTip(reason or _RUN_TIP)

    def _on_run(self) -> None:
        request = self.request()
        if not request.parameters:
            self.status.setText("✗ Choose at least one kind of setting to tune.")
            return
        self._scores = []
        self._xs = []
        self._requested = request.n_trials
        self._result = None
        self.table.setRowCount(0)
        self.trial_points.setData([], [])
        self.best_line.setData([], [])
        self.result_label.setText("Tuning…")
        for b in (self.apply_button, self.profile_button, self.flags_button):
            b.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText("Preparing…")
        self.tune_requested.emit(request)

    def on_progress(self, progress: TuneProgress) -> None:
        budget = f"/{progress.trial_budget}" if progress.trial_budget else ""
        self.status.setText(
            f"{progress.stage}: {progress.message} · trials {progress.trials_done}{budget} · "
            f"{progress.elapsed_s:.0f} s"
        )

    def on_trial(self, trial: TrialRecord) -> None:
        row = self.table.rowCount()
        self.table.setRowCount(row + 1)
        settings = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in trial.params.items())
        state = trial.state.value + (f": {trial.reason}" if trial.reason else "")
        for col, text in enumerate((str(trial.label), settings, f"{trial.score:.1f}", state)):
            self.table.setItem(row, col, cell(text))
        if trial.state.measured:
            self._scores.append(trial.score)
            self._xs.append(trial.label)  # the table's number: a skipped or duplicate trial leaves a gap
            best, running = [], 0.0
            for s in self._scores:
                running = max(running, s)
                best.append(running)
            self.trial_points.setData(self._xs, self._scores)
            self.best_line.setData(self._xs, best)

    def on_finished(self, result: TuneResult) -> None:
        self._result = result
        self.stop_button.setEnabled(False)
        gain = (
            result.gain.text()
            if result.gain is not None
            else "gain not measured (stopped before the comparison)"
        )
        importances = ", ".join(
            f"{k} {v:.0%}" for k, v in sorted(result.importances.items(), key=lambda kv: -kv[1])
        )
        self.result_label.setText(
            f"<b>Best</b> (trial {result.best_label if result.best_label is not None else 'n/a'}): "
            f"{result.flags(include_ctx=False)}<br><b>Against the default:</b> {gain}<br>"
            f"<b>Recommendation:</b> {recommendation_text(result)}<br>"
            f"<b>Importance:</b> {importances or 'n/a (needs 2+ measured trials)'}<br>"
            f"<i>Stopped by: {result.stop_reason}</i>"
        )
        self.status.setText(f"Done in {result.elapsed_s:.0f} s: {result.trials_summary(self._requested)}")
        for b in (self.apply_button, self.profile_button, self.flags_button):
            b.setEnabled(result.best_trial is not None)

    def on_failed(self, message: str) -> None:
        self.stop_button.setEnabled(False)
        self.status.setText(f"✗ {message}")
        self.result_label.setText("No tuning result.")

    def _on_apply(self) -> None:
        if self._result is not None:
            self.apply_requested.emit(self._result.to_profile().to_dict())

    def _on_save_profile(self) -> None:
        if self._result is None:
            return
        name, ok = QInputDialog.getText(self, "Save tuned profile", "Profile name:")
        if ok and name.strip():
            self.save_profile_requested.emit(name.strip(), self._result.to_profile())

    def _on_copy_flags(self) -> None:
        if self._result is not None:
            QGuiApplication.clipboard().setText(self._result.flags())
            self.status.setText("Flags copied: " + self._result.flags())

    def best_settings(self) -> LoadSettings | None:
        return self._result.to_profile() if self._result is not None else None
