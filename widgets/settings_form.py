"""A form of editors built from the core's FIELD_SPECS: one place holds every range and tooltip."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from app.model.fields import FIELD_SPECS, FieldSpec

_STOP_SEPARATOR = "|"


class _WheelGuard(QObject):
    """Lets the mouse wheel scroll the panel instead of changing an editor it passes over.

    Spin boxes and combo boxes take wheel events by default, so scrolling the Model Config panel
    used to change batch sizes on the way. An editor now reacts to the wheel only once focused.
    """

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if event.type() == QEvent.Type.Wheel and isinstance(watched, QWidget) and not watched.hasFocus():
            event.ignore()  # propagates to the scroll area
            return True
        return False


def _int_editor(spec: FieldSpec) -> QSpinBox:
    box = QSpinBox()
    # QSpinBox is 32-bit; the seed's range (up to 2^32-1) is clamped to what it can hold.
    box.setRange(int(spec.minimum or 0), min(int(spec.maximum or 0), 2**31 - 1))
    for value, text in spec.special_values:
        if value == spec.minimum:
            box.setSpecialValueText(text)
    return box


def _float_editor(spec: FieldSpec) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    step = spec.step or 0.1
    box.setDecimals(max(1, len(f"{step:g}".split(".")[-1]) if "." in f"{step:g}" else 1))
    box.setRange(float(spec.minimum or 0.0), float(spec.maximum or 0.0))
    box.setSingleStep(step)
    return box


class SettingsForm(QWidget):
    """Editors for the named fields; `values()` returns plain Python values keyed by field name."""

    changed = Signal()

    def __init__(self, field_names: tuple[str, ...] | list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._editors: dict[str, QWidget] = {}
        self._wheel_guard = _WheelGuard(self)
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for name in field_names:
            spec = FIELD_SPECS[name]
            editor = self._make_editor(spec)
            editor.setObjectName(f"field_{name}")
            tip = f"<b>{spec.label}</b> ({spec.name})<br>{spec.help}"
            if spec.kind in ("int", "float", "choice"):
                tip += f"<br><i>Allowed: {spec.range_text()}</i>"
            editor.setToolTip(tip)
            self._editors[name] = editor
            label = spec.label if spec.kind != "bool" else ""
            layout.addRow(label, editor)
            if label:
                layout.labelForField(editor).setToolTip(tip)

    def _make_editor(self, spec: FieldSpec) -> QWidget:
        editor: QWidget
        if spec.kind == "int":
            editor = _int_editor(spec)
            editor.valueChanged.connect(self.changed)
        elif spec.kind == "float":
            editor = _float_editor(spec)
            editor.valueChanged.connect(self.changed)
        elif spec.kind == "bool":
            editor = QCheckBox(spec.label)
            editor.toggled.connect(self.changed)
        elif spec.kind == "choice":
            editor = QComboBox()
            labels = spec.choice_labels or tuple(str(c) for c in spec.choices or ())
            for value, text in zip(spec.choices or (), labels, strict=False):
                editor.addItem(text, value)
            editor.currentIndexChanged.connect(self.changed)
        else:
            editor = QLineEdit()
            editor.setPlaceholderText("none — separate several with |, write \\n for a newline")
            editor.editingFinished.connect(self.changed)
        if isinstance(editor, QAbstractSpinBox):
            editor.setKeyboardTracking(False)  # typing "4096" is one change, not four
        if isinstance(editor, (QAbstractSpinBox, QComboBox)):
            editor.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # no focus (and no wheel) on hover
            editor.installEventFilter(self._wheel_guard)
        return editor

    def editor(self, name: str) -> QWidget:
        return self._editors[name]

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, editor in self._editors.items():
            if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
                out[name] = editor.value()
            elif isinstance(editor, QCheckBox):
                out[name] = editor.isChecked()
            elif isinstance(editor, QComboBox):
                out[name] = editor.currentData()
            elif isinstance(editor, QLineEdit):
                parts = [p.replace("\\n", "\n") for p in editor.text().split(_STOP_SEPARATOR)]
                out[name] = tuple(p for p in parts if p.strip())
        return out

    def set_values(self, values: dict[str, Any]) -> None:
        """Show `values` without emitting one `changed` per editor; emits `changed` once at the end."""
        for name, value in values.items():
            editor = self._editors.get(name)
            if editor is None:
                continue
            blocked = editor.blockSignals(True)
            try:
                if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
                    editor.setValue(value)
                elif isinstance(editor, QCheckBox):
                    editor.setChecked(bool(value))
                elif isinstance(editor, QComboBox):
                    index = editor.findData(value)
                    if index >= 0:
                        editor.setCurrentIndex(index)
                elif isinstance(editor, QLineEdit):
                    editor.setText(_STOP_SEPARATOR.join(s.replace("\n", "\\n") for s in value))
            finally:
                editor.blockSignals(blocked)
        self.changed.emit()
