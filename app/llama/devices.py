"""The devices llama.cpp computes on, as its own device registry lists them (ggml_backend_dev_*).

This is the one answer to "which GPUs can llama.cpp use here": a Metal, Vulkan, ROCm, SYCL or CUDA
GPU is in the list exactly when the installed build can offload layers to it, whatever the vendor.
NVML only adds telemetry for the NVIDIA ones (app.telemetry).

The Python bindings do not wrap ggml's device registry, so it is called through ctypes on the libggml
that libllama uses. Every signature below was checked against ggml-backend.h as vendored in
llama-cpp-python 0.3.36 (ggml/include/ggml-backend.h):

    size_t             ggml_backend_dev_count(void);
    ggml_backend_dev_t ggml_backend_dev_get(size_t index);
    const char *       ggml_backend_dev_name(ggml_backend_dev_t device);
    const char *       ggml_backend_dev_description(ggml_backend_dev_t device);
    void               ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total);
    enum ggml_backend_dev_type ggml_backend_dev_type(ggml_backend_dev_t device);
    void               ggml_backend_dev_get_props(ggml_backend_dev_t device,
                                                  struct ggml_backend_dev_props * props);
    ggml_backend_reg_t ggml_backend_dev_backend_reg(ggml_backend_dev_t device);
    const char *       ggml_backend_reg_name(ggml_backend_reg_t reg);

ggml_backend_dev_t and ggml_backend_reg_t are pointers to opaque structs; the enum is a C int.
Reading a device has no side effect beyond ggml's registry start-up (which llama_backend_init
does anyway): a device is not initialised until a backend is created on it.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

# enum ggml_backend_dev_type, in the header's order (a C enum counts from 0).
DEVICE_TYPES: tuple[str, ...] = ("CPU", "GPU", "IGPU", "ACCEL", "META")
# llama-bench's get_gpu_info() lists these two: dedicated-memory GPUs and integrated GPUs.
GPU_TYPES = frozenset({"GPU", "IGPU"})


@dataclass(frozen=True)
class LlamaDevice:
    """One entry of ggml's device registry."""

    index: int  # ggml_backend_dev_get(index)
    name: str  # ggml_backend_dev_name: "CPU", "CUDA0", "Vulkan0", "MTL0"
    description: str  # ggml_backend_dev_description: "NVIDIA GeForce RTX 4090", "Apple M2 Max"
    kind: str  # one of DEVICE_TYPES, or "type N" for a type this code does not know
    backend: str | None  # the registry that owns it: "CPU", "CUDA", "Vulkan", "Metal"
    memory_free_bytes: int | None  # as the device reported it when read
    memory_total_bytes: int | None
    pci_bus_id: str | None = None  # "0000:01:00.0" when the backend knows it

    @property
    def is_gpu(self) -> bool:
        return self.kind in GPU_TYPES

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LlamaDevice:
        def opt_int(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        def opt_str(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(
            index=int(data["index"]),
            name=str(data["name"]),
            description=str(data["description"]),
            kind=str(data["kind"]),
            backend=opt_str("backend"),
            memory_free_bytes=opt_int("memory_free_bytes"),
            memory_total_bytes=opt_int("memory_total_bytes"),
            pci_bus_id=opt_str("pci_bus_id"),
        )


def gpu_devices(devices: Iterable[LlamaDevice]) -> tuple[LlamaDevice, ...]:
    """The GPUs among `devices`, in llama.cpp's order (the order --main-gpu counts in)."""
    return tuple(d for d in devices if d.is_gpu)


def gpu_info_text(devices: Iterable[LlamaDevice]) -> str:
    """llama-bench's `gpu_info`: the GPU devices' descriptions joined by ", " ("" without a GPU)."""
    return ", ".join(d.description for d in gpu_devices(devices))


_PCI = re.compile(r"^\s*([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)")


def pci_key(bus_id: str | bytes | None) -> tuple[int, int, int, int] | None:
    """(domain, bus, device, function) of a PCI bus id, whatever its spelling.

    ggml writes "0000:01:00.0" (CUDA adds "-v1" for a virtual device), NVML writes
    "00000000:01:00.0"; both name the same slot.
    """
    if isinstance(bus_id, bytes):
        bus_id = bus_id.decode("ascii", errors="replace")
    if not bus_id:
        return None
    m = _PCI.match(bus_id)
    if m is None:
        return None
    domain, bus, device, function = (int(g, 16) for g in m.groups())
    return domain, bus, device, function


# ---- reading the registry ----------------------------------------------------------------------


class _Caps(ctypes.Structure):
    _fields_ = [
        ("async_", ctypes.c_bool),
        ("host_buffer", ctypes.c_bool),
        ("buffer_from_host_ptr", ctypes.c_bool),
        ("events", ctypes.c_bool),
        ("mmap_support", ctypes.c_bool),
    ]


class _Props(ctypes.Structure):
    # struct ggml_backend_dev_props. Only the fields before `caps` are read; caps has grown over
    # llama.cpp's history (mmap_support is recent), so room is left after it for a newer build's
    # fields and the strings are checked against ggml_backend_dev_name/_description before the
    # device id is believed.
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
        ("memory_free", ctypes.c_size_t),
        ("memory_total", ctypes.c_size_t),
        ("type", ctypes.c_int),
        ("device_id", ctypes.c_char_p),
        ("caps", _Caps),
        ("_room", ctypes.c_byte * 64),
    ]


_DEV = ctypes.c_void_p  # ggml_backend_dev_t
_REG = ctypes.c_void_p  # ggml_backend_reg_t
_SIZE_P = ctypes.POINTER(ctypes.c_size_t)
# name -> (restype, argtypes), as ggml-backend.h declares them (tests/core/test_gpu_devices.py reads
# the installed header and compares).
SIGNATURES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "ggml_backend_dev_count": (ctypes.c_size_t, ()),
    "ggml_backend_dev_get": (_DEV, (ctypes.c_size_t,)),
    "ggml_backend_dev_name": (ctypes.c_char_p, (_DEV,)),
    "ggml_backend_dev_description": (ctypes.c_char_p, (_DEV,)),
    "ggml_backend_dev_memory": (None, (_DEV, _SIZE_P, _SIZE_P)),
    "ggml_backend_dev_type": (ctypes.c_int, (_DEV,)),
    "ggml_backend_dev_get_props": (None, (_DEV, ctypes.POINTER(_Props))),
    "ggml_backend_dev_backend_reg": (_REG, (_DEV,)),
    "ggml_backend_reg_name": (ctypes.c_char_p, (_REG,)),
}


def _declare(ggml: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(ggml, name)
        fn.restype = restype
        fn.argtypes = list(argtypes)


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", errors="replace")


def read_devices(ggml: ctypes.CDLL) -> tuple[LlamaDevice, ...]:
    """Every device in ggml's registry (CPU included), read through `ggml` (libggml, loaded)."""
    _declare(ggml)
    devices = []
    for i in range(int(ggml.ggml_backend_dev_count())):
        dev = ggml.ggml_backend_dev_get(i)
        if not dev:
            continue
        name = _text(ggml.ggml_backend_dev_name(dev))
        description = _text(ggml.ggml_backend_dev_description(dev))
        raw_type = int(ggml.ggml_backend_dev_type(dev))
        kind = DEVICE_TYPES[raw_type] if 0 <= raw_type < len(DEVICE_TYPES) else f"type {raw_type}"
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = ggml.ggml_backend_dev_backend_reg(dev)
        devices.append(
            LlamaDevice(
                index=i,
                name=name,
                description=description,
                kind=kind,
                backend=_text(ggml.ggml_backend_reg_name(reg)) if reg else None,
                # A backend that cannot tell reports 0 of 0: unknown, not an empty device.
                memory_free_bytes=int(free.value) if total.value else None,
                memory_total_bytes=int(total.value) or None,
                pci_bus_id=_device_id(ggml, dev, name, description),
            )
        )
    return tuple(devices)


def _device_id(ggml: ctypes.CDLL, dev: int, name: str, description: str) -> str | None:
    props = _Props()
    ggml.ggml_backend_dev_get_props(dev, ctypes.byref(props))
    if _text(props.name) != name or _text(props.description) != description:
        log.debug("ggml_backend_dev_props of %s does not have the layout expected; no device id", name)
        return None
    return _text(props.device_id) or None
