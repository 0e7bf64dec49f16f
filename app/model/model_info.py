"""Plain data types describing a model file, shared by inspection, presets and the memory estimate."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SizeClass(enum.Enum):
    """Model size class by parameter count (read from the GGUF, never from the file name)."""

    TINY = "tiny"  # < 1B parameters
    SMALL = "small"  # 1B – 3B
    MEDIUM = "medium"  # 3B – 7B
    LARGE = "large"  # >= 7B

    @classmethod
    def from_n_params(cls, n_params: int) -> SizeClass:
        if n_params < 1_000_000_000:
            return cls.TINY
        if n_params < 3_000_000_000:
            return cls.SMALL
        if n_params < 7_000_000_000:
            return cls.MEDIUM
        return cls.LARGE

    @property
    def label(self) -> str:
        return {
            SizeClass.TINY: "Tiny (< 1B)",
            SizeClass.SMALL: "Small (1–3B)",
            SizeClass.MEDIUM: "Medium (3–7B)",
            SizeClass.LARGE: "Large (≥ 7B)",
        }[self]


# Metadata key LlamaScope's quantizer writes into a file made from a quantized model, naming the
# type it was made from.
KEY_QUANTIZED_FROM = "llamascope.quantized_from"


@dataclass(frozen=True)
class TensorTypeStat:
    """One row of a model's tensor-type histogram."""

    type_name: str  # ggml type name, e.g. "Q4_1", "F32"
    n_tensors: int
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF header says about a model; read without touching tensor data."""

    path: str
    file_size_bytes: int
    gguf_version: int
    name: str | None
    architecture: str | None
    n_params: int  # sum of all tensor element counts
    size_class: SizeClass
    size_label: str | None  # general.size_label if present, e.g. "135M"
    file_type: str | None  # llama.cpp file type name, e.g. "Q4_1", "Q4_K_M", "F16"
    tensor_types: tuple[TensorTypeStat, ...]  # sorted by n_bytes descending
    tensor_data_bytes: int  # sum of tensor sizes as stored
    bits_per_weight: float  # tensor_data_bytes * 8 / n_params
    context_length: int | None  # training context (<arch>.context_length)
    n_layer: int | None  # <arch>.block_count
    n_embd: int | None  # <arch>.embedding_length
    n_head: int | None
    n_head_kv: int | None  # defaults to n_head when the key is absent
    n_embd_head_k: int | None  # <arch>.attention.key_length or n_embd // n_head
    n_embd_head_v: int | None  # <arch>.attention.value_length or n_embd // n_head
    vocab_size: int | None  # <arch>.vocab_size or len(tokenizer.ggml.tokens)
    chat_template: str | None
    # The quantized type a LlamaScope-made file was quantized from (KEY_QUANTIZED_FROM), e.g. "Q4_1"
    # for an F16 base made from a Q4_1 model: its provenance, which its name does not carry.
    quantized_from: str | None = None

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @property
    def n_embd_k_gqa(self) -> int | None:
        if self.n_embd_head_k is None or self.n_head_kv is None:
            return None
        return self.n_embd_head_k * self.n_head_kv

    @property
    def n_embd_v_gqa(self) -> int | None:
        if self.n_embd_head_v is None or self.n_head_kv is None:
            return None
        return self.n_embd_head_v * self.n_head_kv

    @property
    def file_type_label(self) -> str:
        """The file type with its provenance: "F16 (dequantized from Q4_1)", "Q4_0 (requantized
        from Q4_1)", "Q8_0"; "n/a" when the header names none."""
        kind = self.file_type or "n/a"
        origin = self.quantized_from
        if not origin or origin == self.file_type:
            return kind
        verb = "dequantized" if self.file_type in ("F32", "F16", "BF16") else "requantized"
        return f"{kind} ({verb} from {origin})"

    @property
    def display_name(self) -> str:
        import os

        return self.name or os.path.splitext(os.path.basename(self.path))[0]
