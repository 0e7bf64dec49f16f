"""The llama.cpp quantization types: name, nominal size, what it is and what it needs.

The names are llama-quantize's (tools/quantize/quantize.cpp, QUANT_OPTIONS), without its aliases
(Q3_K, Q4_K, Q5_K) and without COPY. A type is listed as supported when the installed
llama-cpp-python defines its `LLAMA_FTYPE_*` constant, so a newer or older build shows what it
really offers.

Bits per weight: for the K-quant and I-quant mixes, the figure is the one llama.cpp's quantize
README measured on Llama-3.1-8B (a mix puts some tensors in a higher type, so its file is larger
than its main tensor type alone suggests). For single-type formats it is the block format's exact
size (Q4_0: 18 bytes per 32 weights = 4.5). Either way it is nominal: the real figure depends on
the model's shapes (tensors whose rows do not divide into 256-weight blocks fall back to another
type) and is measured from the written file afterwards.

Importance matrix: llama.cpp refuses to write IQ1/IQ2/IQ3_XXS tensors (and the Q2_K tensors of a
Q2_K_S file) without an importance matrix (src/llama-quant.cpp, `tensor_requires_imatrix`); a file
type needs one when its mix puts any tensor in such a type. LlamaScope computes matrices itself
(`llamascope imatrix`, app.quant.imatrix_compute) and passes one to the quantizer
(`quantize --imatrix`); without one, these types are refused with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

IMATRIX_REFUSAL = (
    "{name} needs an importance matrix (llama.cpp refuses to write its very-low-bit tensors without "
    "one, because the result would be garbage). Compute one with `llamascope imatrix MODEL -o "
    "MODEL.imatrix.gguf` and quantize with `--imatrix MODEL.imatrix.gguf`, or choose a type that needs "
    "none (Q2_K, Q3_K_S or higher, IQ3_S, IQ3_M, IQ4_XS, IQ4_NL)."
)


@dataclass(frozen=True)
class QuantType:
    """One llama.cpp file type (`llama_ftype`) a model can be quantized to."""

    name: str  # llama-quantize's name, e.g. "Q4_K_M"
    ftype_constant: str  # the llama_cpp constant, e.g. "LLAMA_FTYPE_MOSTLY_Q4_K_M"
    bits_per_weight: float  # nominal; see the module docstring
    description: str
    needs_imatrix: bool
    family: str  # "float", "legacy", "k-quant", "i-quant", "ternary", "other"
    main_tensor_type: str  # ggml type of most quantized tensors (llama_ftype_get_default_type)

    @property
    def refusal_reason(self) -> str | None:
        """Why LlamaScope cannot produce this type without an importance matrix, or None when it can."""
        return self.refusal_reason_for(has_imatrix=False)

    def refusal_reason_for(self, *, has_imatrix: bool) -> str | None:
        """Why this type cannot be produced with (or without) a matrix, or None when it can."""
        return IMATRIX_REFUSAL.format(name=self.name) if self.needs_imatrix and not has_imatrix else None

    @property
    def is_float(self) -> bool:
        return self.family == "float"


def _t(
    name: str, bpw: float, description: str, family: str, main: str, *, imatrix: bool = False, const: str = ""
) -> QuantType:
    return QuantType(
        name=name,
        ftype_constant=const or f"LLAMA_FTYPE_MOSTLY_{name}",
        bits_per_weight=bpw,
        description=description,
        needs_imatrix=imatrix,
        family=family,
        main_tensor_type=main,
    )


_TABLE: tuple[QuantType, ...] = (
    _t(
        "Q1_0", 1.125, "1-bit blocks of 128 weights; experimental, for models trained for it", "other", "Q1_0"
    ),
    _t(
        "IQ1_S",
        2.0042,
        "1.56-bit i-quant mix; only usable with an importance matrix",
        "i-quant",
        "IQ1_S",
        imatrix=True,
    ),
    _t(
        "IQ1_M",
        2.1460,
        "1.75-bit i-quant mix; only usable with an importance matrix",
        "i-quant",
        "IQ1_M",
        imatrix=True,
    ),
    _t(
        "TQ1_0",
        1.69,
        "ternary (−1, 0, +1) weights; only for models trained ternary (BitNet)",
        "ternary",
        "TQ1_0",
    ),
    _t(
        "TQ2_0",
        2.06,
        "ternary weights, faster layout; only for models trained ternary (BitNet)",
        "ternary",
        "TQ2_0",
    ),
    _t("Q2_0", 2.25, "2-bit blocks of 64 weights; experimental", "other", "Q2_0"),
    _t("IQ2_XXS", 2.3824, "2.06-bit i-quant; needs an importance matrix", "i-quant", "IQ2_XXS", imatrix=True),
    _t("IQ2_XS", 2.5882, "2.31-bit i-quant; needs an importance matrix", "i-quant", "IQ2_XS", imatrix=True),
    _t("IQ2_S", 2.7403, "2.5-bit i-quant mix; needs an importance matrix", "i-quant", "IQ2_XS", imatrix=True),
    _t("IQ2_M", 2.9294, "2.7-bit i-quant mix; needs an importance matrix", "i-quant", "IQ2_S", imatrix=True),
    _t(
        "Q2_K_S",
        2.9697,
        "2-bit K-quant, small mix; needs an importance matrix",
        "k-quant",
        "Q2_K",
        imatrix=True,
    ),
    _t("Q2_K", 3.1593, "2-bit K-quant mix; large quality loss (+3.5 PPL on Llama-3-8B)", "k-quant", "Q2_K"),
    _t(
        "IQ3_XXS",
        3.2548,
        "3.06-bit i-quant mix; needs an importance matrix",
        "i-quant",
        "IQ3_XXS",
        imatrix=True,
    ),
    _t("IQ3_XS", 3.4977, "3.3-bit i-quant mix; needs an importance matrix", "i-quant", "IQ3_S", imatrix=True),
    _t(
        "Q3_K_S",
        3.6429,
        "3-bit K-quant, small mix; large quality loss (+1.6 PPL on Llama-3-8B)",
        "k-quant",
        "Q3_K",
    ),
    _t("IQ3_S", 3.6606, "3.44-bit i-quant", "i-quant", "IQ3_S"),
    _t("IQ3_M", 3.7628, "3.66-bit i-quant mix", "i-quant", "IQ3_S"),
    _t("Q3_K_M", 3.9960, "3-bit K-quant, medium mix (+0.66 PPL on Llama-3-8B)", "k-quant", "Q3_K"),
    _t("Q3_K_L", 4.2979, "3-bit K-quant, large mix (+0.56 PPL on Llama-3-8B)", "k-quant", "Q3_K"),
    _t("MXFP4_MOE", 4.25, "MXFP4 for the expert tensors of mixture-of-experts models", "other", "MXFP4"),
    _t("IQ4_XS", 4.4597, "4.25-bit non-linear i-quant", "i-quant", "IQ4_XS"),
    _t("Q4_0", 4.5, "legacy 4-bit, one scale per 32 weights (+0.47 PPL on Llama-3-8B)", "legacy", "Q4_0"),
    _t("Q4_K_S", 4.6672, "4-bit K-quant, small mix (+0.27 PPL on Llama-3-8B)", "k-quant", "Q4_K"),
    _t("IQ4_NL", 4.6818, "4.5-bit non-linear i-quant, blocks of 32", "i-quant", "IQ4_NL"),
    _t(
        "Q4_K_M",
        4.8944,
        "4-bit K-quant, medium mix; the usual choice (+0.18 PPL on Llama-3-8B)",
        "k-quant",
        "Q4_K",
    ),
    _t(
        "Q4_1",
        5.0,
        "legacy 4-bit with scale and offset per 32 weights (+0.45 PPL on Llama-3-8B)",
        "legacy",
        "Q4_1",
    ),
    _t("Q5_0", 5.5, "legacy 5-bit, one scale per 32 weights (+0.13 PPL on Llama-3-8B)", "legacy", "Q5_0"),
    _t("Q5_K_S", 5.5704, "5-bit K-quant, small mix (+0.10 PPL on Llama-3-8B)", "k-quant", "Q5_K"),
    _t("Q5_K_M", 5.7036, "5-bit K-quant, medium mix (+0.06 PPL on Llama-3-8B)", "k-quant", "Q5_K"),
    _t(
        "Q5_1",
        6.0,
        "legacy 5-bit with scale and offset per 32 weights (+0.11 PPL on Llama-3-8B)",
        "legacy",
        "Q5_1",
    ),
    _t("Q6_K", 6.5633, "6-bit K-quant (+0.02 PPL on Llama-3-8B)", "k-quant", "Q6_K"),
    _t(
        "Q8_0",
        8.5008,
        "8-bit, one scale per 32 weights; nearly lossless (+0.003 PPL on Llama-3-8B)",
        "legacy",
        "Q8_0",
    ),
    _t("BF16", 16.0, "bfloat16: 16-bit with float32's range; lossless from BF16 originals", "float", "BF16"),
    _t("F16", 16.0005, "IEEE half precision; lossless from F16 originals", "float", "F16"),
    _t("F32", 32.0, "single precision; no quantization", "float", "F32", const="LLAMA_FTYPE_ALL_F32"),
)
# Ordered from smallest to largest, as a user scans for a size.
QUANT_TYPES: tuple[QuantType, ...] = tuple(sorted(_TABLE, key=lambda t: t.bits_per_weight))

_BY_NAME = {t.name: t for t in QUANT_TYPES}
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# ggml tensor types a user may pick for the output tensor or the token embeddings (llama-quantize's
# --output-tensor-type / --token-embedding-type), with their ggml_type numbers from ggml.h.
TENSOR_TYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14,
    "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18, "IQ1_S": 19, "IQ4_NL": 20, "IQ3_S": 21, "IQ2_S": 22,
    "IQ4_XS": 23, "IQ1_M": 29, "BF16": 30, "TQ1_0": 34, "TQ2_0": 35,
}  # fmt: skip
# Tensor types llama.cpp will only write with an importance matrix (tensor_requires_imatrix); the
# output and embedding tensors are exempt there, so these are allowed for those two tensors.
IMATRIX_TENSOR_TYPES = frozenset({"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ1_S", "IQ1_M"})


class UnknownQuantTypeError(ValueError):
    """A type name that is not a llama.cpp quantization type (the message lists the valid ones)."""


def quant_type(name: str) -> QuantType:
    """The type called `name` (case-insensitive; llama-quantize's aliases Q4_K etc. accepted)."""
    key = name.strip().upper()
    key = _ALIASES.get(key, key)
    found = _BY_NAME.get(key)
    if found is None:
        raise UnknownQuantTypeError(
            f"Unknown quantization type {name!r}. Known types: {', '.join(t.name for t in QUANT_TYPES)}."
        )
    return found


def tensor_type_id(name: str) -> int:
    """ggml_type number of a tensor type name such as "Q6_K" (case-insensitive)."""
    key = name.strip().upper()
    if key not in TENSOR_TYPES:
        raise UnknownQuantTypeError(
            f"Unknown tensor type {name!r}. Known tensor types: {', '.join(TENSOR_TYPES)}."
        )
    return TENSOR_TYPES[key]


def _ftypes() -> dict[str, int]:
    """llama-cpp-python's LLAMA_FTYPE_* constants, read without loading llama.cpp here."""
    from app.llama.facts import library_facts

    return library_facts().ftypes


def ftype_value(qtype: QuantType) -> int:
    """The llama_ftype number of a type, from the installed llama-cpp-python."""
    value = _ftypes().get(qtype.ftype_constant)
    if value is None:
        raise UnknownQuantTypeError(f"This llama-cpp-python build does not support {qtype.name}.")
    return int(value)


def supported_quant_types() -> tuple[QuantType, ...]:
    """The types the installed llama-cpp-python knows, smallest first (imatrix types included)."""
    known = _ftypes()
    return tuple(t for t in QUANT_TYPES if t.ftype_constant in known)


def usable_quant_types(*, has_imatrix: bool = False) -> tuple[QuantType, ...]:
    """Supported types LlamaScope can produce: without a matrix, those that need none; with one, all."""
    return tuple(t for t in supported_quant_types() if has_imatrix or not t.needs_imatrix)


def is_quantized_tensor_type(type_name: str) -> bool:
    """True for ggml types that hold quantized blocks (not F32/F16/BF16/F64 or integers)."""
    return type_name.upper() not in {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
