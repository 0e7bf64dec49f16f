"""PyInstaller hook for llama-cpp-python: its llama.cpp shared libraries, where it looks for them.

llama_cpp/llama_cpp.py loads `<dir of llama_cpp>/lib/libllama.so` (llama.dll, libllama.dylib)
with ctypes, and app/llama/runtime.py loads libggml from the same folder; in a bundle that
folder is `_internal/llama_cpp/lib`, so the libraries go there, as binaries (PyInstaller then
collects what they link to, such as libgomp). The ggml backends (CPU, CUDA, Metal, Vulkan…) are
separate libraries in the same folder and come along. LLAMA_CPP_LIB_PATH still overrides it.

`make bundle` sets LLAMASCOPE_LLAMA_LIB_DIR to the portable build of the same llama.cpp
(packaging/build_llama_portable.py: GGML_BACKEND_DL, one CPU backend per CPU generation); its
libraries then replace the venv's, which were compiled for the build machine's CPU only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from PyInstaller.utils.hooks import get_package_paths

_, package_dir = get_package_paths("llama_cpp")
lib_dir = Path(os.environ.get("LLAMASCOPE_LLAMA_LIB_DIR") or Path(package_dir) / "lib")
if not (lib_dir / "libllama.so").exists() and not any(lib_dir.glob("*llama.*")):
    raise SystemExit(f"no llama.cpp libraries in {lib_dir}")

# A Linux wheel holds each library three times as copies, not links: libllama.so (what ctypes
# opens), libllama.so.0 (the soname the other libraries link to) and libllama.so.0.5.0 (the
# real name, which nothing opens). The last is left out.
_REAL_NAME = re.compile(r"\.so\.\d+\.\d+")
_LIBRARY = re.compile(r"(\.so(\.\d+)*|\.dylib|\.dll|\.metal|\.metallib)$")

# libmtmd (and the older libllava) serve the multimodal chat handlers, which LlamaScope does not
# use; llama_cpp imports their bindings only inside those handlers.
_UNUSED = re.compile(r"^(lib)?(mtmd|llava)")


def _linked_sonames(entry_points: list[Path]) -> set[str]:
    """Names of the folder's libraries that `entry_points` link to, directly or through another."""
    from PyInstaller.depend.bindepend import get_imports

    names: set[str] = set()
    todo = list(entry_points)
    while todo:
        for name, _path in get_imports(str(todo.pop())):
            base = Path(name).name
            if base not in names and (lib_dir / base).is_file():
                names.add(base)
                todo.append(lib_dir / base)
    return names


candidates = [
    path
    for path in sorted(lib_dir.iterdir())
    if path.is_file()
    and _LIBRARY.search(path.name)
    and not _REAL_NAME.search(path.name)
    and not _UNUSED.search(path.name)
]
# What Python opens by path (libllama.so, libggml.so...), plus the sonames (libggml-base.so.0...)
# those link to; a soname copy nothing links to (libllama.so.0, needed by libmtmd only) stays out.
_opened = [p for p in candidates if not re.search(r"\.so\.\d+$", p.name)]
_linked = _linked_sonames(_opened)
binaries = [(str(p), "llama_cpp/lib") for p in candidates if p in _opened or p.name in _linked]

# The OpenAI-compatible server needs fastapi/uvicorn; LlamaScope does not use it.
excludedimports = ["llama_cpp.server"]
