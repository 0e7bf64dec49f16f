"""The table of quantization types, and its imatrix column checked against llama.cpp itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest

from app.quant.types import (
    QUANT_TYPES,
    UnknownQuantTypeError,
    ftype_value,
    quant_type,
    supported_quant_types,
    tensor_type_id,
    usable_quant_types,
)

ROOT = Path(__file__).resolve().parents[2]
_TINY_CACHE: dict[tuple[object, ...], str] = {}
_TOKENIZER: dict[str, object] = {}


def build_tiny_llama(
    folder: str,
    *,
    n_embd: int = 64,
    n_ff: int = 128,
    n_head: int = 4,
    n_head_kv: int = 4,
    extra_tokens: int = 0,
    swap_tokens: bool = False,
    add_bos: bool = False,
) -> str:
    """A small loadable llama GGUF with the demo model's tokenizer (random weights, F16 matrices).

    extra_tokens appends tokens (another vocabulary size); swap_tokens exchanges two token texts
    (same size, different vocabulary); add_bos makes the tokenizer add BOS (the demo's does not).
    Files are cached per process, keyed by their shape.
    """
    key = (folder, n_embd, n_ff, n_head, n_head_kv, extra_tokens, swap_tokens, add_bos)
    if key in _TINY_CACHE and os.path.exists(_TINY_CACHE[key]):
        return _TINY_CACHE[key]
    if not _TOKENIZER:
        from app.model.demo_model import demo_model_path

        reader = gguf.GGUFReader(demo_model_path())
        for name in (
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.pre",
        ):
            _TOKENIZER[name] = reader.fields[name].contents()
    tokens = list(_TOKENIZER["tokenizer.ggml.tokens"])  # type: ignore[call-overload]
    types = list(_TOKENIZER["tokenizer.ggml.token_type"])  # type: ignore[call-overload]
    tokens += [f"<|llamascope_extra_{i}|>" for i in range(extra_tokens)]
    types += [1] * extra_tokens
    if swap_tokens:
        tokens[1000], tokens[1001] = tokens[1001], tokens[1000]
    n_vocab = len(tokens)
    name = f"tiny-{n_embd}-{n_ff}-{n_head_kv}-{extra_tokens}-{int(swap_tokens)}-{int(add_bos)}.gguf"
    path = os.path.join(folder, name)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("LlamaScope tiny test model")
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_vocab_size(n_vocab)
    w.add_file_type(1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(str(_TOKENIZER["tokenizer.ggml.pre"]))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(list(_TOKENIZER["tokenizer.ggml.merges"]))  # type: ignore[call-overload]
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(add_bos)
    rng = np.random.default_rng(0)
    head_dim = n_embd // n_head

    def matrix(name: str, rows: int, cols: int) -> None:
        w.add_tensor(name, (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16))

    matrix("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    matrix("blk.0.attn_q.weight", n_embd, n_embd)
    matrix("blk.0.attn_k.weight", head_dim * n_head_kv, n_embd)
    matrix("blk.0.attn_v.weight", head_dim * n_head_kv, n_embd)
    matrix("blk.0.attn_output.weight", n_embd, n_embd)
    matrix("blk.0.ffn_gate.weight", n_ff, n_embd)
    matrix("blk.0.ffn_up.weight", n_ff, n_embd)
    matrix("blk.0.ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _TINY_CACHE[key] = path
    return path


IMATRIX_TYPES = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}


def test_the_usual_types_are_supported_with_their_llama_ftype_numbers() -> None:
    names = {t.name for t in supported_quant_types()}
    for name in (
        "Q2_K",
        "Q3_K_S",
        "Q3_K_M",
        "Q3_K_L",
        "Q4_0",
        "Q4_K_S",
        "Q4_K_M",
        "Q5_K_S",
        "Q5_K_M",
        "Q6_K",
        "Q8_0",
        "IQ4_XS",
        "IQ4_NL",
        "F16",
        "BF16",
        "F32",
    ):
        assert name in names
    # llama.h's enum llama_ftype
    assert ftype_value(quant_type("Q4_K_M")) == 15
    assert ftype_value(quant_type("Q8_0")) == 7
    assert ftype_value(quant_type("F32")) == 0
    assert ftype_value(quant_type("F16")) == 1


def test_rows_are_complete_and_ordered_by_size() -> None:
    bits = [t.bits_per_weight for t in QUANT_TYPES]
    assert bits == sorted(bits)
    for t in QUANT_TYPES:
        assert t.description and t.family and t.main_tensor_type
    assert len({t.name for t in QUANT_TYPES}) == len(QUANT_TYPES)


def test_imatrix_types_are_listed_but_refused_with_the_reason() -> None:
    assert {t.name for t in QUANT_TYPES if t.needs_imatrix} == IMATRIX_TYPES
    reason = quant_type("IQ2_XS").refusal_reason
    assert reason is not None and "importance matrix" in reason
    assert quant_type("Q4_K_M").refusal_reason is None
    assert not IMATRIX_TYPES & {t.name for t in usable_quant_types()}


def test_names_are_case_insensitive_and_aliases_resolve() -> None:
    assert quant_type("q4_k_m").name == "Q4_K_M"
    assert quant_type("Q4_K").name == "Q4_K_M"
    with pytest.raises(UnknownQuantTypeError, match="Known types: .*Q4_K_M"):
        quant_type("Q4_K_XL")
    assert tensor_type_id("q6_k") == 14
    with pytest.raises(UnknownQuantTypeError):
        tensor_type_id("Q4_K_M")  # a file type, not a tensor type


_DRY_RUN = textwrap.dedent(
    """
    import json, sys
    import app.quant.worker as w
    # One process, many dry runs: llama.cpp decides per tensor whether an imatrix is needed.
    for name, ftype in json.loads(sys.argv[2]):
        sys.stderr.write(f"@@@ {name}\\n"); sys.stderr.flush()
        w.run({"source": sys.argv[1], "output": "/nonexistent/unused.gguf", "ftype": ftype, "dry_run": True,
               "allow_requantize": True}, sys.stderr.buffer.write)
        sys.stderr.flush()
    """
)


def test_imatrix_column_agrees_with_llama_cpp_dry_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """llama.cpp's dry run warns "will require an imatrix" exactly for the types marked so.

    The model has the shapes of a typical LLM (rows of 256-multiples, 4 query heads per KV head):
    the demo model's 576-wide rows make llama.cpp fall back to types that need no imatrix, which
    is not what these types are for.
    """
    model = build_tiny_llama(str(tmp_path_factory.mktemp("tiny")), n_embd=256, n_ff=512, n_head_kv=1)
    types = [t for t in supported_quant_types() if t.family in ("i-quant", "k-quant")]
    payload = json.dumps([(t.name, ftype_value(t)) for t in types])
    result = subprocess.run(
        [sys.executable, "-c", _DRY_RUN, model, payload],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    needs: dict[str, bool] = {}
    current = None
    for line in result.stderr.splitlines():
        if line.startswith("@@@ "):
            current = line[4:]
            needs[current] = False
        elif current and "will require an imatrix" in line:
            needs[current] = True
    assert set(needs) == {t.name for t in types}
    assert needs == {t.name: t.needs_imatrix for t in types}


def test_imatrix_types_become_usable_with_a_matrix_and_the_refusal_names_the_cure() -> None:
    iq = quant_type("IQ3_XXS")
    reason = iq.refusal_reason_for(has_imatrix=False)
    assert reason is not None and "llamascope imatrix" in reason and "--imatrix" in reason
    assert iq.refusal_reason_for(has_imatrix=True) is None
    with_matrix = {t.name for t in usable_quant_types(has_imatrix=True)}
    assert {"IQ3_XXS", "IQ2_XS", "Q2_K_S"} <= with_matrix
    assert not IMATRIX_TYPES & {t.name for t in usable_quant_types(has_imatrix=False)}
