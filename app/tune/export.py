"""Tuned settings in the forms people paste: llama.cpp command-line flags and llama-cpp-python code."""

from __future__ import annotations

import shlex
from typing import Any

from app.model.fields import GGML_TYPE_IDS
from app.model.settings import LoadSettings

# llama.cpp (llama-server, llama-cli) treats any -ngl above the layer count as "all"; 999 is the
# spelling every build accepts (newer ones also take "all", older ones do not).
_ALL_LAYERS = 999


def llama_cpp_args(load: LoadSettings, *, include_ctx: bool = True) -> list[str]:
    """Flags for llama-server / llama-cli that reproduce `load`, every tuned value spelled out.

    Spellings of llama.cpp's common/arg.cpp as of its late-2025 builds: -fa takes a value (on|off|auto)
    since August 2025 and defaults to auto, so it is always written out (a bare -fa on an older build
    means on, and would swallow the next token on a newer one); -ctk/-ctv, -tb, -ub, --no-mmap, --mlock
    and --numa distribute are unchanged since 2024. llama-cpp-python's numa=True calls
    llama_numa_init(GGML_NUMA_STRATEGY_DISTRIBUTE), which is --numa distribute.
    """
    args: list[str] = []
    if include_ctx:
        args += ["-c", str(load.n_ctx)]
    pairs: list[tuple[str, object]] = [
        ("-t", load.n_threads),
        ("-tb", load.n_threads_batch),
        ("-b", load.n_batch),
        ("-ub", load.n_ubatch),
        ("-fa", "on" if load.flash_attn else "off"),
        ("-ctk", load.type_k),
        ("-ctv", load.type_v),
        ("-ngl", _ALL_LAYERS if load.n_gpu_layers < 0 else load.n_gpu_layers),
    ]
    for flag, value in pairs:
        args += [flag, str(value)]
    if not load.use_mmap:
        args.append("--no-mmap")
    if load.use_mlock:
        args.append("--mlock")
    if load.numa:
        args += ["--numa", "distribute"]
    if not load.offload_kqv:
        args.append("--no-kv-offload")
    return args


def llama_cpp_flags(load: LoadSettings, *, include_ctx: bool = True) -> str:
    """`llama_cpp_args` as one shell-quoted string."""
    return shlex.join(llama_cpp_args(load, include_ctx=include_ctx))


def llama_kwargs_named(load: LoadSettings) -> dict[str, Any]:
    """`load.to_llama_kwargs()` with the cache types as names ("q8_0") instead of ggml type ids, for
    display and JSON; `llama_python_snippet` gives the form llama_cpp.Llama accepts."""
    kwargs = load.to_llama_kwargs()
    kwargs["type_k"] = load.type_k
    kwargs["type_v"] = load.type_v
    return kwargs


def llama_python_snippet(load: LoadSettings, model_path: str = "model.gguf") -> str:
    """Python that loads the model with these settings in llama-cpp-python, ids commented with names."""
    lines = ["from llama_cpp import Llama", "", "llm = Llama(", f"    model_path={model_path!r},"]
    for key, value in load.to_llama_kwargs().items():
        comment = ""
        if key in ("type_k", "type_v"):
            name = getattr(load, key)
            comment = f"  # {name} (GGML_TYPE_{name.upper()} = {GGML_TYPE_IDS[name]})"
        elif key == "seed" and load.seed == -1:
            comment = "  # LLAMA_DEFAULT_SEED: a new random seed each load"
        elif key == "n_gpu_layers" and value < 0:
            comment = "  # all layers"
        lines.append(f"    {key}={value!r},{comment}")
    lines.append(")")
    return "\n".join(lines)
