"""Quantization panel: quantize a GGUF and measure what it costs in size, quality and speed."""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from widgets.panel import PlannedPanel


class QuantizationPanel(PlannedPanel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(
            "Quantization",
            [
                ("Methods", "Will list the quantization types this llama.cpp supports and quantize a GGUF."),
                ("Quality", "Will measure perplexity and KL divergence against a base model."),
                ("Comparison", "Will compare size, quality and speed of the quantized files."),
                ("Tools", "Perplexity, multiple-choice benchmarks, compare and export."),
            ],
            parent,
        )
