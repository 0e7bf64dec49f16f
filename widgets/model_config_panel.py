"""Model Config panel: pick a GGUF, read its metadata, set every load and sampling option, load it."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from PySide6.QtCore import QEvent, QObject, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QGuiApplication, QKeyEvent, QPalette
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.common.formatting import BINARY_UNITS_NOTE, fmt, fmt_bytes, format_bytes
from app.engine.crash_registry import CrashRecord
from app.engine.types import LoadProgress, LoadResult
from app.model.demo_model import demo_model_path
from app.model.fields import FIELD_SPECS, Problem
from app.model.file_format import SUPPORTED_FORMATS
from app.model.memory import MemoryEstimate, Verdict, estimate_memory
from app.model.model_info import ModelInfo, SizeClass
from app.model.profiles import ProfileError, ProfileStore
from app.model.settings import (
    LOAD_FIELDS,
    SAMPLING_FIELDS,
    LoadSettings,
    SamplingSettings,
    SettingsError,
    needs_reload,
    preset_for,
    preset_for_model,
)
from widgets.panel import Panel
from widgets.settings_form import SettingsForm

_BASIC_LOAD_FIELDS = ("n_ctx", "n_threads", "n_threads_batch", "n_batch", "n_ubatch", "n_gpu_layers", "seed")
_ADVANCED_LOAD_FIELDS = tuple(f for f in LOAD_FIELDS if f not in _BASIC_LOAD_FIELDS)
# Where a list entry came from. Entries the user opened and files quantized here are remembered
# ("model/entries") until the user removes them; folder files are listed while their folder is.
ORIGIN_DEMO = "demo"
ORIGIN_OPENED = "opened"
ORIGIN_QUANTIZED = "quantized"
ORIGIN_FOLDER = "folder"
_ORIGIN_NOTES = {ORIGIN_DEMO: "built-in demo", ORIGIN_QUANTIZED: "quantized here"}
_PRESET_AUTO = "auto"
_PRESET_CUSTOM = "custom"
_VERDICT_COLOURS = {Verdict.FITS: "#2e7d32", Verdict.TIGHT: "#b26a00", Verdict.WONT_FIT: "#c62828"}
PathRole = Qt.ItemDataRole.UserRole


def _note(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _demo_path() -> str | None:
    demo = demo_model_path()
    return os.path.abspath(demo) if demo else None


class ModelConfigPanel(Panel):
    """The first column. It asks for work through signals; the main window connects them."""

    load_requested = Signal(str, object, bool)  # path, LoadSettings, override the memory check
    unload_requested = Signal()
    cancel_requested = Signal()
    inspection_requested = Signal(str)  # path whose GGUF header should be read off the GUI thread
    model_info_changed = Signal(object)  # ModelInfo | None: the selected model's header, once known
    settings_applied = Signal(str)  # what "Apply to Model Config" changed, in words, for the status bar

    def __init__(
        self,
        settings: QSettings,
        *,
        profile_store: ProfileStore | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Model Config", parent)
        self._settings = settings
        self._profiles = profile_store or ProfileStore()
        self._infos: dict[str, ModelInfo] = {}
        self._errors: dict[str, str] = {}
        self._missing: set[str] = set()  # listed paths where no file is (moved, deleted, unplugged)
        self._crashes: dict[str, CrashRecord] = {}  # models that crashed llama.cpp when last loaded
        self._selected_path: str | None = None
        self._loaded: LoadResult | None = None  # what the engine holds, as the bridge reports it
        self._busy = False
        self._taken = ""  # why another panel's work holds the engine; "" when it does not
        self._loading = False
        self._had_model_at_load = False  # a model was loaded when the running load was asked for
        self._applying = False
        # The last load settings that were valid and fit the selected model: what save_state keeps
        # when the current ones would not fit, so a start never opens on "Will not fit".
        self._last_fitting_load: LoadSettings | None = None
        self._current_fits: bool | None = None  # None: not estimated (no model, or not yet)
        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(150)  # coalesce bursts of edits into one estimate
        self._estimate_timer.timeout.connect(self._refresh_estimate)
        self.setAcceptDrops(True)

        # Order: what to load, the button and its outcome, whether it fits, then the details.
        self._build_models_box()
        self._build_loading_box()
        self._build_memory_box()
        self._build_metadata_box()
        self._build_settings_boxes()
        self._build_formats_box()
        self.platform_label = _note("reading the llama.cpp build…")
        self.platform_label.setObjectName("platformLabel")
        self.add_box("Platform", self.platform_label)
        self._restore_settings()

    # ---- construction ------------------------------------------------------------------------
    def _build_models_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        self.model_list = QListWidget()
        self.model_list.setObjectName("modelList")
        self.model_list.setMinimumHeight(80)
        self.model_list.setMaximumHeight(150)
        # A long title or file name is shortened in the middle (its start and its ".gguf" end stay),
        # whole in the tooltip, instead of widening the column or scrolling the list sideways.
        self.model_list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.model_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.model_list.setToolTip(
            "GGUF models: the built-in demo model, the files you opened or quantized here, and the "
            "files in your model folders; remembered until you remove them. Drop a .gguf file here "
            "to add it. Delete or the context menu removes an entry (the file stays on disk). "
            + BINARY_UNITS_NOTE
        )
        self.model_list.currentItemChanged.connect(self._on_current_item_changed)
        self.model_list.itemDoubleClicked.connect(lambda _item: self.request_load())
        self.model_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.model_list.customContextMenuRequested.connect(self._show_list_menu)
        self.model_list.installEventFilter(self)  # the Delete key removes the selected entry
        open_button = QPushButton("Open file…")
        open_button.setToolTip("Choose a GGUF file (Ctrl+O)")
        open_button.clicked.connect(self.open_file_dialog)
        folder_button = QPushButton("Add folder…")
        folder_button.setToolTip("Add a folder whose .gguf files are listed here; remembered")
        folder_button.clicked.connect(self.add_folder_dialog)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setObjectName("removeModelButton")
        self.remove_button.clicked.connect(self.remove_selected_model)
        row = QHBoxLayout()
        row.addWidget(open_button)
        row.addWidget(folder_button)
        row.addWidget(self.remove_button)
        # Shown only while the list is empty (no demo model bundled, nothing remembered yet).
        self.empty_list_hint = _note("No models yet — Open file… or drop a .gguf here")
        self.empty_list_hint.setObjectName("emptyModelListHint")
        self.empty_list_hint.hide()
        layout.addWidget(self.model_list)
        layout.addWidget(self.empty_list_hint)
        layout.addLayout(row)
        self.add_box("Models", body)

    def _build_metadata_box(self) -> None:
        body = QWidget()
        self._meta_form = QFormLayout(body)
        self._meta_form.setContentsMargins(0, 0, 0, 0)
        self._meta_labels: dict[str, QLabel] = {}
        for key in (
            "Name",
            "Architecture",
            "Parameters",
            "Size class",
            "File type",
            "File size",
            "Bits/weight",
            "Train context",
            "Layers",
            "Embedding",
            "Heads / KV",
            "Vocabulary",
            "Chat template",
            "Tensor types",
            "Format",
        ):
            label = _note("n/a")
            self._meta_labels[key] = label
            self._meta_form.addRow(key, label)
        for key in ("File size", "Tensor types"):
            self._meta_labels[key].setToolTip(BINARY_UNITS_NOTE)
        self.metadata_error = _note()
        self.metadata_error.setObjectName("metadataError")
        self.metadata_error.setStyleSheet("color: #c62828")
        self.metadata_error.hide()
        self._meta_form.addRow(self.metadata_error)
        self.add_box("Metadata", body)

    def _build_formats_box(self) -> None:
        lines = [f"{'✓' if ok else '→'} <b>{name}</b> — {note}" for name, ok, note in SUPPORTED_FORMATS]
        label = _note("<br>".join(lines))
        label.setTextFormat(Qt.TextFormat.RichText)
        label.setToolTip("llama.cpp reads GGUF; other formats are recognised and need converting first")
        self.add_box("Formats", label)

    def _build_settings_boxes(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("presetCombo")
        self.preset_combo.setToolTip(
            "Starting settings by model size, read from the GGUF's parameter count. "
            "Auto picks the selected model's class; editing a setting makes it Custom."
        )
        self.preset_combo.addItem("Auto (by model size)", _PRESET_AUTO)
        for size_class in SizeClass:
            self.preset_combo.addItem(size_class.label, size_class.value)
        self.preset_combo.addItem("Custom", _PRESET_CUSTOM)
        self.preset_combo.activated.connect(self._on_preset_activated)
        self.profile_combo = QComboBox()
        self.profile_combo.setObjectName("profileCombo")
        self.profile_combo.setToolTip(
            "Named profiles of load and sampling settings, saved as TOML in your configuration folder"
        )
        self.profile_combo.activated.connect(self._on_profile_activated)
        save_profile = QPushButton("Save…")
        save_profile.setToolTip("Save the current settings as a named profile")
        save_profile.clicked.connect(self._on_save_profile_clicked)
        delete_profile = QPushButton("Delete")
        delete_profile.setToolTip("Delete the selected profile")
        delete_profile.clicked.connect(self._on_delete_profile_clicked)
        form = QFormLayout()
        form.addRow("Preset", self.preset_combo)
        row = QHBoxLayout()
        row.addWidget(self.profile_combo, 1)
        row.addWidget(save_profile)
        row.addWidget(delete_profile)
        form.addRow("Profile", row)
        layout.addLayout(form)
        self.apply_note = _note()
        self.apply_note.setObjectName("applyNote")
        self.apply_note.hide()
        layout.addWidget(self.apply_note)
        self.load_form = SettingsForm(_BASIC_LOAD_FIELDS)
        layout.addWidget(self.load_form)
        self.problems_label = _note()
        self.problems_label.setObjectName("problemsLabel")
        self.problems_label.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.problems_label)
        self.add_box("Loading settings", body)

        self.advanced_form = SettingsForm(_ADVANCED_LOAD_FIELDS)
        self.add_box("Advanced", self.advanced_form)
        self.sampling_form = SettingsForm(SAMPLING_FIELDS)
        self.add_box("Sampling", self.sampling_form)
        for form_widget in (self.load_form, self.advanced_form, self.sampling_form):
            form_widget.changed.connect(self._on_settings_edited)
        self._refresh_profiles()

    def _build_memory_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        self.memory_verdict = QLabel("n/a")
        self.memory_verdict.setObjectName("memoryVerdict")
        font = self.memory_verdict.font()
        font.setBold(True)
        self.memory_verdict.setFont(font)
        self.memory_bar = QProgressBar()
        self.memory_bar.setObjectName("memoryBar")
        self.memory_bar.setRange(0, 100)
        self.memory_bar.setFormat("n/a")
        self._memory_bar_palette = QPalette(self.memory_bar.palette())
        self.memory_detail = _note("Select a model to estimate its memory.")
        self.memory_detail.setToolTip(
            "Estimate before loading: weights (tensor bytes in the file) + KV cache "
            "(layers × n_ctx × (K + V width) × bytes of the cache types) + compute buffer estimate, "
            "against RAM available now. Fits: under 80 %; tight: 80–100 %; will not fit: over 100 %.<br>"
            + BINARY_UNITS_NOTE
        )
        self.memory_bar.setToolTip(self.memory_detail.toolTip())
        layout.addWidget(self.memory_verdict)
        layout.addWidget(self.memory_bar)
        layout.addWidget(self.memory_detail)
        self.add_box("Memory fit", body)

    def _build_loading_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        self.load_button = QPushButton("Load")
        self.load_button.setObjectName("loadButton")
        self.load_button.clicked.connect(self.request_load)
        self.unload_button = QPushButton("Unload")
        self.unload_button.setObjectName("unloadButton")
        self.unload_button.clicked.connect(self.request_unload)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.setToolTip("Stop loading; nothing stays half-loaded")
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.override_check = QCheckBox("Load even if it will not fit")
        self.override_check.setToolTip("Skip the memory check: the system may swap heavily or kill the app")
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.unload_button)
        buttons.addWidget(self.cancel_button)
        self.load_progress = QProgressBar()
        self.load_progress.setObjectName("loadProgress")
        self.load_progress.setRange(0, 100)
        self.load_progress.setValue(0)
        self.load_status = _note("Not loaded")
        self.load_status.setObjectName("loadStatus")
        self.reload_note = _note()
        self.reload_note.setObjectName("reloadNote")
        self.reload_note.setStyleSheet("color: #b26a00")
        self.reload_note.hide()
        self._loaded_form = QFormLayout()
        self._loaded_labels: dict[str, QLabel] = {}
        for key in ("Load time", "Threads", "Memory", "Context", "llama.cpp buffers"):
            label = _note("n/a")
            self._loaded_labels[key] = label
            self._loaded_form.addRow(key, label)
        self._loaded_labels["llama.cpp buffers"].setToolTip(
            "The buffers llama.cpp reported when it loaded the model. " + BINARY_UNITS_NOTE
        )
        layout.addLayout(buttons)
        layout.addWidget(self.override_check)
        layout.addWidget(self.load_progress)
        layout.addWidget(self.load_status)
        layout.addWidget(self.reload_note)
        layout.addLayout(self._loaded_form)
        self.add_box("Loading", body)
        self._update_buttons()

    # ---- public API for the main window ------------------------------------------------------
    def load_settings(self) -> LoadSettings:
        """The load settings as edited (not validated)."""
        return LoadSettings.from_dict({**self.load_form.values(), **self.advanced_form.values()})

    def sampling_settings(self) -> SamplingSettings:
        """The sampling settings as edited, validated; raises SettingsError naming the bad field."""
        sampling = SamplingSettings.from_dict(self.sampling_form.values())
        sampling.validate()
        return sampling

    def apply_recommendations(self, values: dict[str, Any], source: str = "") -> str:
        """Set recommended load settings (from the Hardware panel's advice or Auto-Tune); unknown
        keys are ignored. Returns, shows and emits (`settings_applied`) what changed.

        The preset becomes Custom only when a setting actually changed. When a model is loaded and a
        changed setting is read at load time, the note says that a reload is needed.
        """
        known = {k: v for k, v in values.items() if k in LOAD_FIELDS}
        before = self.load_settings()
        self._applying = True  # not an edit by hand: the preset is decided below
        try:
            self.load_form.set_values({k: v for k, v in known.items() if k in _BASIC_LOAD_FIELDS})
            advanced = {k: v for k, v in known.items() if k in _ADVANCED_LOAD_FIELDS}
            if advanced:
                self.advanced_form.set_values(advanced)
        finally:
            self._applying = False
        after = self.load_settings()
        changed = [n for n in LoadSettings.field_names() if getattr(before, n) != getattr(after, n)]
        origin = f" from {source}" if source else ""
        if not changed:
            message = f"Applied{origin}: nothing changed — Model Config already has these settings."
        else:
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(_PRESET_CUSTOM))
            parts = ", ".join(
                f"{FIELD_SPECS[n].label.lower()} {_value_text(getattr(after, n))}" for n in changed
            )
            message = f"Applied{origin}: {parts}"
            if self._loaded is None:
                message += " — used at the next Load."
            elif set(needs_reload(self._loaded.settings, after)) & set(changed):
                message += " — reload the model to use them."
            else:
                message += " — in effect from the next request."
        self.apply_note.setText(message)
        self.apply_note.show()
        self.settings_applied.emit(message)
        return message

    def save_profile(self, name: str, load: LoadSettings) -> None:
        """Save `load` with the current sampling settings as a named profile (e.g. a tuned one)."""
        try:
            self._profiles.save(name, load, self.sampling_settings())
        except (ProfileError, SettingsError, OSError) as exc:
            QMessageBox.warning(self, "Profile not saved", str(exc))
            return
        self._refresh_profiles()

    def set_platform_text(self, text: str) -> None:
        self.platform_label.setText(text)

    def platform_text(self) -> str:
        return self.platform_label.text()

    def selected_path(self) -> str | None:
        return self._selected_path

    def loaded_model_name(self) -> str:
        return self._loaded.model.display_name if self._loaded else "n/a"

    def select_initial_model(self, path: str | None) -> None:
        """Fill the list and select `path` (added if new), else the last selected model, else the
        demo model."""
        legacy = self._settings.value("model/entries") is None  # settings of a LlamaScope before entries
        self._rebuild_model_list()
        if path:
            self.add_model(path, ORIGIN_OPENED)
            return
        chosen = self._settings.value("model/selected") or demo_model_path()
        item = self._find_item(os.path.abspath(str(chosen))) if chosen else None
        if item is None and chosen and legacy:
            self.add_model(str(chosen), ORIGIN_OPENED)  # selected once, before entries were kept
            return
        if item is None and self.model_list.count():
            item = self.model_list.item(0)
        if item is not None:
            self.model_list.setCurrentItem(item)

    def add_model(self, path: str, origin: str = ORIGIN_OPENED, *, select: bool = True) -> None:
        """Add a model file to the list and remember it until the user removes it.

        The one way in for every entry: a file the user opened or dropped (ORIGIN_OPENED), a file a
        quantization wrote (ORIGIN_QUANTIZED). A path already listed keeps its place. `select`
        makes it the selected model; a quantization's output is added without taking the selection
        from the model the user works on.
        """
        path = os.path.abspath(path)
        if path != _demo_path():
            entries = self._stored_entries()
            if path not in (p for p, _ in entries):
                self._store_entries([*entries, (path, origin)])
            hidden = self._list_setting("model/hidden")
            if path in hidden:
                self._settings.setValue("model/hidden", [p for p in hidden if p != path])
        item = self._find_item(path)
        if item is None:
            item = self._add_item(path, origin)
            self._describe_all()
        else:
            # Listed already: the file may have been written again (a quantization to the same name)
            # or be back after it went missing; read it again rather than show what was.
            self.inspection_requested.emit(path)
        if select:
            self.model_list.setCurrentItem(item)

    def add_model_file(self, path: str) -> None:
        """Add a file the user chose to the list (if new) and select it."""
        self.add_model(path, ORIGIN_OPENED)

    def model_paths(self) -> list[str]:
        """The listed paths, in list order."""
        return [self.model_list.item(row).data(PathRole) for row in range(self.model_list.count())]

    def is_missing(self, path: str) -> bool:
        return os.path.abspath(path) in self._missing

    def remove_model(self, path: str) -> bool:
        """Take `path` off the list (never off the disk); False for the built-in demo model.

        A file of a model folder stays off the list until it is opened again.
        """
        path = os.path.abspath(path)
        item = self._find_item(path)
        if item is None or item.data(PathRole + 1) == ORIGIN_DEMO:
            return False
        self._store_entries([(p, o) for p, o in self._stored_entries() if p != path])
        if item.data(PathRole + 1) == ORIGIN_FOLDER:
            self._settings.setValue("model/hidden", [*self._list_setting("model/hidden"), path])
        row = self.model_list.row(item)
        self.model_list.takeItem(row)  # selects a neighbour, which reports the change
        if self.model_list.count() == 0:
            self.empty_list_hint.show()
        self._describe_all()
        self._update_buttons()
        return True

    def remove_selected_model(self) -> None:
        if self._selected_path is not None:
            self.remove_model(self._selected_path)

    def on_model_missing(self, path: str) -> None:
        """The inspector found no file at `path`: the entry stays listed, marked missing."""
        self._missing.add(path)
        item = self._find_item(path)
        if item is not None:
            self._describe_item(item)

    def open_file_dialog(self) -> None:
        start = os.path.dirname(self._selected_path) if self._selected_path else os.path.expanduser("~")
        path, _ = QFileDialog.getOpenFileName(
            self, "Open model", start, "GGUF models (*.gguf);;All files (*)"
        )
        if path:
            self.add_model_file(path)

    def add_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add model folder", os.path.expanduser("~"))
        if folder:
            self.add_folder(folder)

    def add_folder(self, folder: str) -> None:
        folders = self._list_setting("model/folders")
        if folder not in folders:
            folders.append(folder)
            self._settings.setValue("model/folders", folders)
        self._rebuild_model_list()

    def request_load(self) -> None:
        if self._busy or self._taken or self._selected_path is None:
            return
        self._had_model_at_load = self._loaded is not None
        load = self.load_settings()
        try:
            load.validate(self._infos.get(self._selected_path))
        except SettingsError as exc:
            self.on_load_failed(str(exc))
            return
        crash = self._crashes.get(self._selected_path)
        if crash is not None and not self._confirm_load_after_crash(crash):
            return
        self._loading = True
        self.load_progress.setValue(0)
        self.load_status.setText(f"Loading {os.path.basename(self._selected_path)}…")
        self.load_status.setStyleSheet("")
        self._update_buttons()
        self.load_requested.emit(self._selected_path, load, self.override_check.isChecked())

    def _confirm_load_after_crash(self, crash: CrashRecord) -> bool:
        answer = QMessageBox.warning(
            self,
            "This model crashed llama.cpp",
            f"{os.path.basename(crash.path)} crashed llama.cpp the last time it was loaded: "
            f"{crash.signal_text}.\n\nLlamaScope survives it, but the load will most likely fail "
            "again. Load it anyway?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def on_crash_record_read(self, path: str, record: CrashRecord | None) -> None:
        if record is None:
            self._crashes.pop(path, None)
        else:
            self._crashes[path] = record
        item = self._find_item(path)
        if item is not None:
            self._describe_item(item)

    def request_unload(self) -> None:
        if not self._busy and not self._taken and self._loaded is not None:
            self.unload_requested.emit()

    # ---- slots for engine events -------------------------------------------------------------
    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        if not busy:
            self._loading = False
        # Settings that need a reload cannot change under a running operation.
        self.load_form.setEnabled(not busy)
        self.advanced_form.setEnabled(not busy)
        self.preset_combo.setEnabled(not busy)
        self.profile_combo.setEnabled(not busy)
        self._update_buttons()

    def set_engine_taken(self, reason: str) -> None:
        """Another panel's work holds the engine (`reason` says which), or not ("")."""
        self._taken = reason
        self._update_buttons()

    def on_load_progressed(self, progress: LoadProgress) -> None:
        self.load_progress.setValue(round(progress.fraction * 100))

    def on_load_finished(self, result: LoadResult) -> None:
        self._loaded = result
        self.apply_note.hide()  # a "reload to use them" is done now
        if self._crashes.pop(result.model.path, None) is not None:  # the engine forgot it too
            item = self._find_item(result.model.path)
            if item is not None:
                self._describe_item(item)
        self._loading = False
        self.load_progress.setValue(100)
        self.load_status.setText(f"✓ Loaded {result.model.display_name}")
        self.load_status.setStyleSheet("color: #2e7d32")
        s, mem = result.settings, result.memory
        self._loaded_labels["Load time"].setText(f"{result.load_time_s:.2f} s")
        self._loaded_labels["Threads"].setText(f"{s.n_threads} generation / {s.n_threads_batch} prompt")
        self._loaded_labels["Memory"].setText(
            ("mmap" if s.use_mmap else "read into RAM") + (", mlock" if s.use_mlock else "")
        )
        self._loaded_labels["Context"].setText(f"{result.n_ctx:,} tokens")
        self._loaded_labels["llama.cpp buffers"].setText(
            f"model {fmt_bytes(mem.model_buffer_bytes)} · KV {fmt_bytes(mem.kv_cache_bytes)} · "
            f"compute {fmt_bytes(mem.compute_buffer_bytes)}"
        )
        self._update_reload_note()
        self._update_buttons()

    # The engine frees the loaded model before it loads another, after the checks that can refuse
    # (file, settings, memory). The bridge reports `on_unloaded` before a load's outcome when the
    # engine no longer holds it, so `_loaded` is the engine's truth by the time these run.
    def on_load_cancelled(self) -> None:
        self._loading = False
        self.load_progress.setValue(0)
        self.load_status.setText("Loading cancelled; " + self._what_is_loaded())
        self.load_status.setStyleSheet("")
        self._update_buttons()

    def on_load_failed(self, message: str) -> None:
        self._loading = False
        self.load_progress.setValue(0)
        self.load_status.setText(f"✗ {message}\n" + self._what_is_loaded())
        self.load_status.setStyleSheet("color: #c62828")
        self._update_buttons()

    def on_model_lost(self, message: str) -> None:
        """The engine lost its model between requests (its process ended): say so and why."""
        self.load_status.setText(f"✗ {message}")
        self.load_status.setStyleSheet("color: #c62828")

    def _what_is_loaded(self) -> str:
        if self._loaded is not None:
            return f"{self._loaded.model.display_name} is still loaded."
        if self._had_model_at_load:
            return "the model loaded before was freed first, so no model is loaded."
        return "no model is loaded."

    def on_unloaded(self) -> None:
        self._loaded = None
        self.load_progress.setValue(0)
        self.load_status.setText("Not loaded")
        self.load_status.setStyleSheet("")
        self._clear_loaded_labels()
        self._update_reload_note()
        self._update_buttons()

    def on_model_inspected(self, path: str, info: ModelInfo | None, error: str) -> None:
        if info is not None:
            self._infos[path] = info
            self._errors.pop(path, None)
            self._missing.discard(path)
        else:
            self._errors[path] = error
        if self._find_item(path) is not None:
            self._describe_all()  # a title now known may be shared with another entry
        if path == self._selected_path:
            self._show_metadata()
            self.model_info_changed.emit(info)
            if info is not None and self.preset_combo.currentData() == _PRESET_AUTO:
                self._apply_settings(*preset_for_model(info))
            self._schedule_estimate()
            self._update_buttons()

    # ---- state and persistence ---------------------------------------------------------------
    def save_state(self) -> None:
        self._settings.setValue("model/selected", self._selected_path or "")
        load: LoadSettings | None = self.load_settings()
        if self._current_fits is False:
            # Invalid or too big for the selected model: remember the last settings that fitted, or
            # keep what was remembered, so the next start does not open on "Will not fit".
            load = self._last_fitting_load
        if load is not None:
            self._settings.setValue("settings/load", json.dumps(load.to_dict()))
        self._settings.setValue("settings/sampling", json.dumps(self._sampling_dict()))
        self._settings.setValue("settings/preset", self.preset_combo.currentData())

    def _sampling_dict(self) -> dict[str, Any]:
        values = self.sampling_form.values()
        values["stop"] = list(values.get("stop", ()))
        return values

    def _restore_settings(self) -> None:
        load, sampling = LoadSettings(), SamplingSettings()
        try:
            if raw := self._settings.value("settings/load"):
                load = LoadSettings.from_dict(json.loads(str(raw)))
            if raw := self._settings.value("settings/sampling"):
                sampling = SamplingSettings.from_dict(json.loads(str(raw)))
        except (SettingsError, ValueError):
            load, sampling = LoadSettings(), SamplingSettings()  # a damaged entry: start from defaults
        self._apply_settings(load, sampling)
        preset = self._settings.value("settings/preset") or _PRESET_AUTO
        index = self.preset_combo.findData(preset)
        self.preset_combo.setCurrentIndex(max(0, index))

    def _list_setting(self, key: str) -> list[str]:
        value = self._settings.value(key) or []
        return [str(v) for v in ([value] if isinstance(value, str) else value)]

    def _stored_entries(self) -> list[tuple[str, str]]:
        """The remembered entries, [(path, origin)], in the order they were added."""
        raw = self._settings.value("model/entries")
        if raw is None:
            # Before entries were kept, only the last loaded models were ("model/recent").
            return [(os.path.abspath(p), ORIGIN_OPENED) for p in self._list_setting("model/recent")]
        try:
            data = json.loads(str(raw))
            return [(str(e["path"]), str(e.get("origin", ORIGIN_OPENED))) for e in data]
        except (ValueError, TypeError, KeyError):
            return []  # a damaged entry: the list starts again from the demo model and the folders

    def _store_entries(self, entries: list[tuple[str, str]]) -> None:
        self._settings.setValue("model/entries", json.dumps([{"path": p, "origin": o} for p, o in entries]))

    # ---- model list --------------------------------------------------------------------------
    def _rebuild_model_list(self) -> None:
        selected = self._selected_path
        entries: list[tuple[str, str]] = []
        demo = _demo_path()
        if demo:
            entries.append((demo, ORIGIN_DEMO))
        entries += self._stored_entries()
        hidden = set(self._list_setting("model/hidden"))
        for folder in self._list_setting("model/folders"):
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                continue  # a removed or unplugged folder stays remembered but lists nothing
            entries += [
                (path, ORIGIN_FOLDER)
                for n in names
                if n.lower().endswith(".gguf") and (path := os.path.join(folder, n)) not in hidden
            ]
        blocked = self.model_list.blockSignals(True)
        self.model_list.clear()
        seen: set[str] = set()
        for path, origin in entries:
            path = os.path.abspath(path)
            if path not in seen:
                seen.add(path)
                self._add_item(path, origin)
        self.model_list.blockSignals(blocked)
        self._describe_all()
        self.empty_list_hint.setVisible(self.model_list.count() == 0)
        if selected and (item := self._find_item(selected)) is not None:
            self.model_list.setCurrentItem(item)

    def _add_item(self, path: str, origin: str) -> QListWidgetItem:
        item = QListWidgetItem()
        item.setData(PathRole, path)
        item.setData(PathRole + 1, origin)
        self.model_list.addItem(item)
        self.empty_list_hint.hide()
        self._describe_item(item)
        if path not in self._infos and path not in self._errors:
            self.inspection_requested.emit(path)
        return item

    def _title(self, path: str) -> str:
        info = self._infos.get(path)
        return info.display_name if info is not None else os.path.basename(path)

    def _describe_all(self) -> None:
        """Describe every entry: whether a title is shared decides whether its file name shows."""
        for row in range(self.model_list.count()):
            self._describe_item(self.model_list.item(row))
        self._update_remove_button()

    def _describe_item(self, item: QListWidgetItem) -> None:
        path = item.data(PathRole)
        origin = item.data(PathRole + 1)
        info = self._infos.get(path)
        title = self._title(path)
        same_title = sum(1 for p in self.model_paths() if self._title(p) == title)
        name = os.path.basename(path)
        if same_title > 1 and title != name:
            title = f"{title} — {name}"  # two quantizations of one model share their header's name
        if path in self._missing:
            detail = "✗ missing — no file at this path"
        elif info is not None:
            detail = f"{info.file_type_label} · {format_bytes(info.file_size_bytes)}"
        elif path in self._errors:
            detail = "✗ not loadable"
        else:
            detail = "reading header…"
        if origin in _ORIGIN_NOTES:
            detail += f" · {_ORIGIN_NOTES[origin]}"
        crash = self._crashes.get(path)
        if crash is not None:
            detail += " · ⚠ crashed llama.cpp"
        item.setText(f"{title}\n{detail}")
        tip = path
        if path in self._missing:
            tip += (
                "\nNo file is there now (moved, renamed, deleted, or on a drive that is not plugged in). "
                "Put it back and select it again, or remove it from the list."
            )
        elif path in self._errors:
            tip += f"\n{self._errors[path]}"
        if crash is not None:
            tip += "\n" + crash.summary() + ("\n" + "\n".join(crash.log_tail[-3:]) if crash.log_tail else "")
        item.setToolTip(tip)

    def _update_remove_button(self) -> None:
        item = self.model_list.currentItem()
        builtin = item is not None and item.data(PathRole + 1) == ORIGIN_DEMO
        self.remove_button.setEnabled(item is not None and not builtin)
        self.remove_button.setToolTip(
            "The built-in demo model is part of LlamaScope and always listed."
            if builtin
            else "Remove the selected model from this list (Delete); the file stays on disk."
        )

    def _show_list_menu(self, pos: object) -> None:
        item = self.model_list.itemAt(pos)  # type: ignore[call-overload]
        if item is None:
            return
        path = item.data(PathRole)
        menu = QMenu(self.model_list)
        remove = menu.addAction("Remove from list (file stays on disk)")
        remove.setEnabled(item.data(PathRole + 1) != ORIGIN_DEMO)
        remove.triggered.connect(lambda: self.remove_model(path))
        copy = menu.addAction("Copy path")
        copy.triggered.connect(lambda: QGuiApplication.clipboard().setText(path))
        menu.popup(self.model_list.viewport().mapToGlobal(pos))  # type: ignore[call-overload]

    def _find_item(self, path: str) -> QListWidgetItem | None:
        for row in range(self.model_list.count()):
            item = self.model_list.item(row)
            if item.data(PathRole) == path:
                return item
        return None

    def _on_current_item_changed(self, current: QListWidgetItem | None, _previous: object) -> None:
        self._selected_path = current.data(PathRole) if current is not None else None
        self._update_remove_button()
        if self._selected_path in self._missing:
            # Look again: the file may be back (a drive plugged in again).
            self._missing.discard(self._selected_path)
            self._errors.pop(self._selected_path, None)
            self._describe_item(current)  # type: ignore[arg-type]
            self.inspection_requested.emit(self._selected_path)
        self._show_metadata()
        self.model_info_changed.emit(self._infos.get(self._selected_path) if self._selected_path else None)
        if self._selected_path is not None:
            info = self._infos.get(self._selected_path)
            if info is not None and self.preset_combo.currentData() == _PRESET_AUTO:
                self._apply_settings(*preset_for_model(info))
        self._schedule_estimate()
        self._update_reload_note()
        self._update_buttons()

    def _show_metadata(self) -> None:
        path = self._selected_path
        info = self._infos.get(path) if path else None
        error = self._errors.get(path) if path else None
        labels = self._meta_labels
        if info is None:
            for label in labels.values():
                label.setText("n/a")
        else:
            labels["Name"].setText(info.display_name)
            labels["Architecture"].setText(info.architecture or "n/a")
            labels["Parameters"].setText(
                f"{info.n_params:,}" + (f" ({info.size_label})" if info.size_label else "")
            )
            labels["Size class"].setText(info.size_class.label)
            labels["File type"].setText(info.file_type_label)  # "F16 (dequantized from Q4_1)"
            labels["File size"].setText(format_bytes(info.file_size_bytes))
            labels["Bits/weight"].setText(f"{info.bits_per_weight:.2f}")
            labels["Train context"].setText(fmt(info.context_length, ","))
            labels["Layers"].setText(fmt(info.n_layer))
            labels["Embedding"].setText(fmt(info.n_embd))
            labels["Heads / KV"].setText(f"{fmt(info.n_head)} / {fmt(info.n_head_kv)}")
            labels["Vocabulary"].setText(fmt(info.vocab_size, ","))
            labels["Chat template"].setText("✓ present" if info.has_chat_template else "✗ none")
            labels["Tensor types"].setText(
                ", ".join(
                    f"{t.type_name} ×{t.n_tensors} ({format_bytes(t.n_bytes)})" for t in info.tensor_types
                )
            )
            labels["Format"].setText(f"GGUF v{info.gguf_version} ✓")
        self.metadata_error.setVisible(bool(error))
        self.metadata_error.setText(error or "")

    # ---- settings ----------------------------------------------------------------------------
    def _apply_settings(self, load: LoadSettings, sampling: SamplingSettings) -> None:
        load_values = load.to_dict()
        self._applying = True  # changes from here on are the panel's, not the user's
        try:
            self.load_form.set_values(load_values)
            self.advanced_form.set_values(load_values)
            self.sampling_form.set_values(sampling.to_dict())
        finally:
            self._applying = False

    def _on_settings_edited(self) -> None:
        user_edit = not self._applying and self.sender() in (self.load_form, self.advanced_form)
        if user_edit and self.preset_combo.currentData() != _PRESET_CUSTOM:
            # The user changed a load setting by hand: the preset no longer describes the settings.
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(_PRESET_CUSTOM))
        self._schedule_estimate()
        self._update_reload_note()

    def _on_preset_activated(self, _index: int) -> None:
        choice = self.preset_combo.currentData()
        info = self._infos.get(self._selected_path or "")
        if choice == _PRESET_AUTO and info is not None:
            self._apply_settings(*preset_for_model(info))
        elif choice not in (_PRESET_AUTO, _PRESET_CUSTOM):
            load, sampling = preset_for(SizeClass(choice))
            if info is not None and info.context_length and load.n_ctx > info.context_length:
                load = dataclasses.replace(load, n_ctx=info.context_length)
            self._apply_settings(load, sampling)

    def _refresh_profiles(self) -> None:
        self.profile_combo.clear()
        self.profile_combo.addItem("(choose a profile)", None)
        for name in self._profiles.list():
            self.profile_combo.addItem(name, name)

    def _on_profile_activated(self, _index: int) -> None:
        name = self.profile_combo.currentData()
        if not name:
            return
        try:
            load, sampling = self._profiles.load(name)
        except (ProfileError, SettingsError) as exc:
            QMessageBox.warning(self, "Profile not loaded", str(exc))
            return
        self.preset_combo.setCurrentIndex(self.preset_combo.findData(_PRESET_CUSTOM))
        self._apply_settings(load, sampling)

    def _on_save_profile_clicked(self) -> None:
        name, ok = QInputDialog.getText(self, "Save profile", "Profile name:")
        if not ok or not name.strip():
            return
        try:
            sampling = self.sampling_settings()
            self._profiles.save(name.strip(), self.load_settings(), sampling)
        except (ProfileError, SettingsError, OSError) as exc:
            QMessageBox.warning(self, "Profile not saved", str(exc))
            return
        self._refresh_profiles()
        self.profile_combo.setCurrentIndex(self.profile_combo.findData(name.strip()))

    def _on_delete_profile_clicked(self) -> None:
        name = self.profile_combo.currentData()
        if name:
            try:
                self._profiles.delete(name)
            except (ProfileError, OSError) as exc:
                QMessageBox.warning(self, "Profile not deleted", str(exc))
            self._refresh_profiles()

    # ---- memory estimate and validation ------------------------------------------------------
    def _schedule_estimate(self) -> None:
        self._estimate_timer.start()

    def _refresh_estimate(self) -> None:
        info = self._infos.get(self._selected_path or "")
        load = self.load_settings()
        problems = load.problems(info)
        try:
            problems += SamplingSettings.from_dict(self.sampling_form.values()).problems(load)
        except SettingsError as exc:
            problems.append(Problem(exc.field, str(exc)))
        self.problems_label.setText(
            "<br>".join(
                f"<span style='color:{'#c62828' if p.is_error else '#b26a00'}'>"
                f"{'✗' if p.is_error else '⚠'} {p.message}</span>"
                for p in problems
            )
        )
        self.problems_label.setVisible(bool(problems))
        load_errors = any(p.is_error for p in problems if p.field in LOAD_FIELDS)
        if info is None or load_errors:
            self._current_fits = False if load_errors else None
            self.memory_verdict.setText("n/a")
            self.memory_verdict.setStyleSheet("")
            self.memory_bar.setValue(0)
            self.memory_bar.setFormat("n/a")
            self._colour_memory_bar(None)
            self.memory_detail.setText(
                "Select a loadable model to estimate its memory."
                if info is None
                else "Fix the settings above to estimate memory."
            )
            return
        estimate = estimate_memory(info, load)
        self._current_fits = estimate.verdict is not Verdict.WONT_FIT
        if self._current_fits:
            self._last_fitting_load = load
        self._show_estimate(estimate)

    def _show_estimate(self, estimate: MemoryEstimate) -> None:
        self.memory_verdict.setText(estimate.verdict.label.capitalize())
        self.memory_verdict.setStyleSheet(f"color: {_VERDICT_COLOURS[estimate.verdict]}")
        if estimate.available_ram_bytes:
            percent = round(100 * estimate.total_ram_bytes / estimate.available_ram_bytes)
            self.memory_bar.setValue(min(100, percent))  # the bar is full; the text says by how much
            self.memory_bar.setFormat(f"{percent:,} % of available RAM")
            self._colour_memory_bar(None if estimate.ram_verdict is Verdict.FITS else estimate.ram_verdict)
        else:
            self.memory_bar.setValue(0)
            self.memory_bar.setFormat("available RAM n/a")
            self._colour_memory_bar(None)
        self.memory_detail.setText(estimate.summary())

    def _colour_memory_bar(self, verdict: Verdict | None) -> None:
        """The style's own colour while it fits; the verdict's orange or red when tight or over."""
        palette = QPalette(self._memory_bar_palette)
        if verdict is not None:
            palette.setColor(QPalette.ColorRole.Highlight, QColor(_VERDICT_COLOURS[verdict]))
        self.memory_bar.setPalette(palette)

    def _update_reload_note(self) -> None:
        if self._loaded is None:
            self.reload_note.hide()
            self.load_button.setText("Load")
            return
        reasons = []
        if self._selected_path != self._loaded.model.path:
            reasons.append("a different model is selected")
        changed = needs_reload(self._loaded.settings, self.load_settings())
        if changed:
            reasons.append("changed: " + ", ".join(changed))
        self.reload_note.setVisible(bool(reasons))
        self.reload_note.setText("Reload needed — " + "; ".join(reasons) if reasons else "")
        self.load_button.setText("Reload" if reasons else "Load")

    def _update_buttons(self) -> None:
        loadable = self._selected_path is not None and self._selected_path not in self._errors
        free = not self._busy and not self._taken
        self.load_button.setEnabled(loadable and free)
        self.unload_button.setEnabled(self._loaded is not None and free)
        self.cancel_button.setEnabled(self._loading)
        # A disabled button says why.
        busy_why = self._taken or (
            "The engine is busy with another request from this window: wait for it, or stop it."
            if self._busy
            else ""
        )
        if busy_why:
            load_tip = unload_tip = busy_why
        else:
            load_tip = (
                "Load the selected model with these settings (Ctrl+L)"
                if loadable
                else "Select a model that can be loaded (see its metadata for why not)."
            )
            unload_tip = "Free the model's memory (Ctrl+U)" if self._loaded else "No model is loaded."
        self.load_button.setToolTip(load_tip)
        self.unload_button.setToolTip(unload_tip)

    def _clear_loaded_labels(self) -> None:
        for label in self._loaded_labels.values():
            label.setText("n/a")

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if (
            watched is self.model_list
            and event.type() == QEvent.Type.KeyPress
            and isinstance(event, QKeyEvent)
            and event.key() == Qt.Key.Key_Delete
        ):
            self.remove_selected_model()
            return True
        return super().eventFilter(watched, event)

    # ---- drag and drop -----------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 (Qt override)
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 (Qt override)
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        for path in paths:
            self.add_model(path, ORIGIN_OPENED)
        event.acceptProposedAction()
