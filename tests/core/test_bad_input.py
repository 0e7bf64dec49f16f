"""Every bad input a user can give on the command line gets a message, never a traceback.

Each case runs `llamascope` as a user runs it (a child process) with one bad argument or file, and
asserts a non-zero exit, a message on stderr that names the problem, no "Traceback" anywhere and
no use of the last-resort line ("failed unexpectedly"): that line is for bugs, and every case here
has its own message. The bad files are written into a temporary folder: empty, truncated and crafted
copies of the demo model's header, non-GGUF files, bad JSON, JSONL and CSV. Nearly every case is
refused before llama.cpp is touched; the few that load a model say so in their id ("loads").
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import crafted_copy

WAIT_S = 300  # per case; a loaded machine must not fail a case
MiB = 1024 * 1024
HEADER_BYTES = 2 * MiB  # the demo model's GGUF header is about 1.8 MB


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # "{name}" is replaced by the path of the bad file `name` (see `files`)
    expect: tuple[str, ...]  # fragments of the message on stderr, compared case-insensitively


def case(id: str, command: str, *, expect: str | tuple[str, ...]) -> Case:
    """`command` is split at spaces: no argument here holds one."""
    return Case(id, tuple(command.split()), (expect,) if isinstance(expect, str) else expect)


def _mmlu_row(question: str = "What is 2 + 2?", answer: str = "B") -> str:
    return f'"{question}",3,4,5,6,{answer}\n'


def _hellaswag_line() -> str:
    return (
        '{"ctx": "A man sits.", "endings": ["He eats.", "He flies.", "He sings.", "He naps."], "label": 0}\n'
    )


def _arc_line() -> str:
    return (
        '{"question": {"stem": "Which is a planet?", "choices": [{"text": "Mars", "label": "A"}, '
        '{"text": "Moon", "label": "B"}]}, "answerKey": "A"}\n'
    )


def _llama_bench_record(**fields: str) -> str:
    record = {"model_filename": '"m.gguf"', "n_prompt": "512", "samples_ns": "[250000000]"} | fields
    return "[{" + ", ".join(f'"{k}": {v}' for k, v in record.items()) + "}]"


def _header_copy(demo: str, path: Path, *, size: int | None = None) -> Path:
    """The demo model's header; the rest of the file zeros (sparse), to `size` or the demo's size."""
    with open(demo, "rb") as src:
        head = src.read(HEADER_BYTES)
    path.write_bytes(head)
    os.truncate(path, os.path.getsize(demo) if size is None else size)
    return path


def _with_count(path: Path, offset: int, change: int) -> Path:
    """Add `change` to the u64 count at `offset` (8: tensors, 16: metadata keys)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        value = struct.unpack("<Q", f.read(8))[0]
        f.seek(offset)
        f.write(struct.pack("<Q", value + change))
    return path


def _read_only_folder(base: Path) -> str:
    """A folder this user cannot write to: a chmod 555 folder, or for root (whom modes do not stop)
    /proc/self, which the kernel keeps read-only for everyone."""
    folder = base / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return str(folder)
    if sys.platform.startswith("linux") and not os.access("/proc/self", os.W_OK):
        return "/proc/self"
    pytest.skip("no folder is read-only for this user")


def _closed_port() -> int:
    """A local port nothing listens on: one the kernel just handed out and that was closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def files(demo_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The bad files, by name; written once for every case (and never inside the demo's package)."""
    d = tmp_path_factory.mktemp("bad-input")
    paths: dict[str, str] = {
        "demo": demo_model,
        "dir": str(d / "a-folder"),
        "missing": str(d / "missing.gguf"),
    }
    (d / "a-folder").mkdir()
    (d / "a-folder" / "inside.gguf").write_bytes(b"")

    def write(name: str, data: bytes | str) -> None:
        path = d / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        paths[name] = str(path)

    # Model files that are not models.
    write("empty.gguf", b"")
    write("text.gguf", "this is a shopping list, not a model\n" * 20)
    write("noise.gguf", b"GGUF" + struct.pack("<I", 3) + random.Random(14).randbytes(64 * 1024))
    write("v1.gguf", b"GGUF" + struct.pack("<III", 1, 0, 0) + b"\0" * 64)
    write("legacy.bin", struct.pack("<I", 0x67676D6C) + b"\0" * 256)
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    write("model.safetensors", len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    huge = b"GGUF" + struct.pack("<IQQ", 3, 10**7, 0) + b"\0" * 64
    write("many-tensors.gguf", huge)
    # Copies of the demo model: cut inside the header, cut inside the tensor data (a real copy, as an
    # interrupted download leaves it), and headers whose key or tensor count is wrong.
    cut_header = d / "cut-header.gguf"
    with open(demo_model, "rb") as src:
        cut_header.write_bytes(src.read(1 * MiB))
    paths["cut-header.gguf"] = str(cut_header)
    cut_data = d / "cut-data.gguf"
    shutil.copyfile(demo_model, cut_data)
    os.truncate(cut_data, 50 * MiB)
    paths["cut-data.gguf"] = str(cut_data)
    paths["keys-minus.gguf"] = str(_with_count(_header_copy(demo_model, d / "keys-minus.gguf"), 16, -1))
    paths["keys-plus.gguf"] = str(_with_count(_header_copy(demo_model, d / "keys-plus.gguf"), 16, +3))
    paths["tensors-plus.gguf"] = str(_with_count(_header_copy(demo_model, d / "tensors-plus.gguf"), 8, +1))
    # A header llama.cpp's loader asserts on (LlamaScope's own check passes it): the engine host dies.
    paths["crafted.gguf"] = crafted_copy(demo_model, str(d), "llama.block_count", 0)

    # Text and data files.
    write("empty.txt", "")
    write("blank.txt", "  \n\n\t\n")
    write("binary.txt", b"\x00\x01\x02 not text \x00" * 100)
    write("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"))
    write("short.txt", "Just a few words.")
    write("logits.bin", b"not a logits file at all" * 10)
    write("nonutf8.json", b"\xff\xfe[{}]")
    write("infinity.json", _llama_bench_record(samples_ns="[Infinity]"))
    write("1e400.json", _llama_bench_record(samples_ns="[1e400]"))
    write("nan.json", _llama_bench_record(n_threads="NaN"))
    write("huge-int.json", _llama_bench_record(n_prompt="9" * 5000))
    write("nested.json", "[" * 100_000 + "]" * 100_000)
    write("not-json.json", "{this is not json")
    write("scalars.json", "[1, 2, 3]")
    write("no-model.json", '[{"n_prompt": 512, "samples_ns": [1]}]')
    write("negative.json", _llama_bench_record(n_prompt="-512"))
    write("wrong-type.json", _llama_bench_record(model_filename='["a", "list"]'))
    write("no-test.json", _llama_bench_record(n_prompt="0"))
    write("empty.json", "")
    write("bad-line.jsonl", _llama_bench_record()[1:-1] + "\n{broken\n")
    write("long-field.csv", _mmlu_row("x" * 140_000))
    write("unclosed.csv", '"What is 2 + 2?,3,4,5,6,B\n' + _mmlu_row() * 5000 + "x" * 140_000)
    write("columns.csv", "question,only,four\n")
    write("answer.csv", _mmlu_row() + _mmlu_row(answer="E"))
    write("latin1.csv", _mmlu_row("caf\xe9?").encode("latin-1"))
    write("nested.jsonl", '{"ctx": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    write("huge-int.jsonl", '{"label": ' + "9" * 5000 + "}\n")
    write("not-json.jsonl", _hellaswag_line() + "not json\n")
    write("list.jsonl", "[1, 2]\n")
    write("hellaswag-fields.jsonl", '{"ctx": "A man sits down."}\n')
    write("hellaswag-label.jsonl", _hellaswag_line().replace('"label": 0', '"label": 7'))
    write("arc-fields.jsonl", '{"question": "Which is a planet?"}\n')
    write("arc-key.jsonl", _arc_line().replace('"answerKey": "A"', '"answerKey": "Z"'))
    write("blank.jsonl", "\n\n")
    write("studies.sqlite3", "not a database, but text")
    paths["read-only"] = _read_only_folder(d)
    paths["closed-url"] = f"http://127.0.0.1:{_closed_port()}"
    paths["not-a-folder"] = str(d / "empty.txt" / "out.gguf")
    paths["no-folder"] = str(d / "no" / "such" / "folder" / "out.gguf")
    yield paths
    (d / "read-only").chmod(0o755)


CASES: tuple[Case, ...] = (
    # ---- the command itself ----------------------------------------------------------------------
    case("unknown-command", "frobnicate", expect="invalid choice: 'frobnicate'"),
    case("gui-unknown-option", "gui --fullscreen", expect="unrecognized arguments: --fullscreen"),
    case("gui-two-models", "gui a.gguf b.gguf", expect="unrecognized arguments: b.gguf"),
    case("self-test-missing-model", "--self-test {missing}", expect="self-test failed at step model"),
    case("self-test-corrupt-model-loads", "--self-test {keys-minus.gguf}", expect="header is corrupt"),
    # ---- info ------------------------------------------------------------------------------------
    case("info-missing", "info {missing}", expect=("not found", "missing.gguf")),
    case("info-folder", "info {dir}", expect=("folder", "inside.gguf")),
    case("info-device", "info /dev/zero", expect="not a regular file"),
    case("info-empty", "info {empty.gguf}", expect=("empty", "0 bytes")),
    case("info-text", "info {text.gguf}", expect="not a recognised model file"),
    case("info-noise", "info {noise.gguf}", expect="not a valid gguf file"),
    case("info-gguf-v1", "info {v1.gguf}", expect="gguf v1"),
    case("info-legacy-ggml", "info {legacy.bin}", expect="convert_llama_ggml_to_gguf"),
    case("info-safetensors", "info {model.safetensors}", expect=("safetensors", "convert")),
    case("info-10M-tensors", "info {many-tensors.gguf}", expect="10,000,000 tensors"),
    case("info-cut-in-header", "info {cut-header.gguf}", expect=("truncated", "header ends early")),
    case("info-cut-in-data", "info {cut-data.gguf}", expect=("truncated", "incomplete download")),
    case("info-key-count-low", "info {keys-minus.gguf}", expect=("header is corrupt", "metadata keys")),
    case("info-key-count-high", "info {keys-plus.gguf}", expect=("header is corrupt", "metadata key 3")),
    case("info-tensor-count-high", "info {tensors-plus.gguf}", expect=("header is corrupt", "273 tensors")),
    case("info-two-models", "info {demo} {demo}", expect="unrecognized arguments"),
    case("info-unknown-option", "info --yaml", expect="unrecognized arguments: --yaml"),
    # ---- generate --------------------------------------------------------------------------------
    case("generate-no-prompt", "generate {demo}", expect="--prompt"),
    case("generate-missing", "generate {missing} -p hi", expect="not found"),
    case("generate-folder", "generate {dir} -p hi", expect="folder"),
    case("generate-device", "generate /dev/zero -p hi", expect="not a regular file"),
    case("generate-empty", "generate {empty.gguf} -p hi", expect="empty"),
    case("generate-cut-in-data", "generate {cut-data.gguf} -p hi", expect="truncated"),
    case("generate-key-count", "generate {keys-minus.gguf} -p hi", expect="header is corrupt"),
    case("generate-safetensors", "generate {model.safetensors} -p hi", expect="convert"),
    case("generate-max-tokens-word", "generate -p hi -n many", expect="invalid int value: 'many'"),
    case("generate-max-tokens-negative", "generate -p hi -n -5", expect="max_tokens"),
    case("generate-ctx-zero", "generate -p hi --ctx 0", expect="n_ctx must be between 1"),
    case("generate-ctx-negative", "generate -p hi --ctx -4096", expect="n_ctx must be between 1"),
    case("generate-ctx-huge", "generate -p hi --ctx 99999999999999", expect="n_ctx must be between"),
    case("generate-ctx-float", "generate -p hi --ctx 2048.5", expect="invalid int value"),
    case("generate-threads-zero", "generate -p hi -t 0", expect="--threads must be at least 1"),
    case("generate-threads-negative", "generate -p hi -t -2", expect="--threads must be at least 1"),
    case("generate-threads-above-cores", "generate -p hi -t 10000", expect="logical cores"),
    case("generate-temperature-nan", "generate -p hi --temp nan", expect="temperature must be"),
    case("generate-temperature-inf", "generate -p hi --temp inf", expect="temperature must be"),
    case("generate-temperature-negative", "generate -p hi --temp -1", expect="temperature must be"),
    case("generate-temperature-word", "generate -p hi --temp warm", expect="invalid float value"),
    case("generate-seed-huge", "generate -p hi --seed 1099511627776", expect="seed must be between"),
    case("generate-seed-negative", "generate -p hi --seed -7", expect="seed must be between"),
    case(
        "generate-llama-cpp-asserts-loads",
        "generate {crafted.gguf} -p hi -n 1",
        expect=("crafted", "llama.cpp"),
    ),
    # ---- bench -----------------------------------------------------------------------------------
    case("bench-range-too-long", "bench -p 1-100000000", expect=("100,000,000 values", "at most 1,000")),
    case(
        "bench-range-astronomic",
        "bench -n 1-9999999999999999999999999999999999999999",
        expect="at most 1,000",
    ),
    case("bench-lists-too-long", "bench -d 0-600,0-600", expect="more than 1,000 values"),
    case("bench-range-backwards", "bench -p 512-8", expect="bad range '512-8'"),
    case("bench-range-factor-one", "bench -p 1-64*1", expect="bad range"),
    case("bench-size-word", "bench -p big", expect="'big' is not a whole number"),
    case("bench-size-negative", "bench -n -128", expect="-n -128: sizes must be 0 or more"),
    case("bench-no-tests", "bench -p 0 -n 0", expect="no tests"),
    case("bench-context-too-big", "bench -p 2000000 -n 0", expect="largest context"),
    case("bench-depth-too-big", "bench -d 1048576", expect="largest context"),
    case("bench-pg-one-number", "bench -pg 512", expect="-pg takes two numbers"),
    case("bench-pg-range", "bench -pg 1-5000,128", expect="at most 1,000"),
    case("bench-repetitions-zero", "bench -r 0", expect="repetitions must be at least 1"),
    case("bench-repetitions-word", "bench -r few", expect="invalid int value: 'few'"),
    case("bench-threads-zero", "bench -t 0", expect="-t must be at least 1"),
    case("bench-threads-above-cores", "bench -t 100000", expect="logical cores"),
    case("bench-threads-range-above-cores", "bench -t 1-1000", expect="logical cores"),
    case("bench-batch-zero", "bench -b 0", expect="n_batch must be between 1"),
    case("bench-ubatch-above-batch", "bench -b 64 -ub 512", expect="must not exceed n_batch"),
    case("bench-flash-attn-two", "bench -fa 2", expect="'2' is not 0 or 1"),
    case("bench-mmap-word", "bench -mmp maybe", expect="'maybe' is not 0 or 1"),
    case("bench-cache-type", "bench -ctk q9_9", expect="type_k must be one of"),
    case("bench-gpu-layers-negative", "bench -ngl -5", expect="n_gpu_layers must be between"),
    case("bench-sweep-too-big", "bench -b 1-100 -ub 1-100 -t 1", expect="at most 10,000"),
    case("bench-output-format", "bench -o xml", expect="invalid choice: 'xml'"),
    case("bench-missing-model", "bench {missing}", expect="not found"),
    case("bench-folder", "bench {dir}", expect="folder"),
    case("bench-device", "bench /dev/null", expect="not a regular file"),
    case("bench-empty-model", "bench {empty.gguf}", expect="empty"),
    case("bench-cut-model", "bench {cut-header.gguf}", expect="truncated"),
    case("bench-key-count", "bench {keys-plus.gguf}", expect="header is corrupt"),
    case("bench-one-good-one-bad", "bench {demo} {noise.gguf}", expect="not a valid gguf"),
    # ---- history and compare ---------------------------------------------------------------------
    case("history-import-missing", "history --import {missing}", expect="no such file"),
    case("history-import-folder", "history --import {dir}", expect="is a folder"),
    case("history-import-device", "history --import /dev/zero", expect="not a regular file"),
    case("history-import-empty", "history --import {empty.json}", expect="holds no benchmark records"),
    case("history-import-not-utf8", "history --import {nonutf8.json}", expect="not utf-8 text"),
    case("history-import-infinity", "history --import {infinity.json}", expect="samples_ns[0] is infinite"),
    case("history-import-1e400", "history --import {1e400.json}", expect="such as 1e400"),
    case("history-import-nan", "history --import {nan.json}", expect="n_threads is nan"),
    case("history-import-huge-int", "history --import {huge-int.json}", expect="4,300 digits"),
    case("history-import-nested", "history --import {nested.json}", expect="nested too deeply"),
    case("history-import-not-json", "history --import {not-json.json}", expect="not json"),
    case("history-import-scalars", "history --import {scalars.json}", expect="must be a json object"),
    case("history-import-no-model", "history --import {no-model.json}", expect="no model_filename"),
    case("history-import-negative", "history --import {negative.json}", expect="n_prompt is -512"),
    case("history-import-wrong-type", "history --import {wrong-type.json}", expect="must be a string"),
    case("history-import-no-test", "history --import {no-test.json}", expect="needs prompt or generated"),
    case("history-import-bad-jsonl-line", "history --import {bad-line.jsonl}", expect="line 2 is not json"),
    case("history-import-a-model", "history --import {demo}", expect="not utf-8 text"),
    case("history-unknown-run", "history --run 99999", expect="no run 99999"),
    case("history-unknown-run-json", "history --run 99999 --json", expect="no run 99999"),
    case("history-negative-run", "history --run -3", expect="no run -3"),
    case("history-run-word", "history --run latest", expect="invalid int value: 'latest'"),
    case("compare-unknown-run", "compare 99999", expect="no run 99999"),
    case("compare-unknown-second-run", "compare 99998 99999", expect="no run 9999"),
    case("compare-run-word", "compare first", expect="invalid int value: 'first'"),
    case("compare-no-run", "compare", expect="the following arguments are required: run_a"),
    # ---- report ----------------------------------------------------------------------------------
    case("report-unknown-run", "report 99999 -o {dir}/r.html", expect="no run 99999"),
    case("report-negative-run", "report -3 -o {dir}/r.html", expect="no run -3"),
    case("report-run-word", "report latest -o {dir}/r.html", expect="invalid int value: 'latest'"),
    case("report-no-run", "report -o {dir}/r.html", expect="the following arguments are required: RUN"),
    case("report-no-output", "report 1", expect="the following arguments are required: -o"),
    case("report-output-folder", "report 1 -o {dir}", expect="is a folder"),
    case("report-output-no-folder", "report 1 -o {no-folder}", expect="does not exist"),
    case("report-output-read-only", "report 1 -o {read-only}/r.html", expect="read-only"),
    case("report-output-device", "report 1 -o /dev/full", expect="not a regular file"),
    # ---- hw and monitor --------------------------------------------------------------------------
    case("hw-unknown-option", "hw --xml", expect="unrecognized arguments: --xml"),
    case("hw-extra-argument", "hw gpu", expect="unrecognized arguments: gpu"),
    case("monitor-interval-zero", "monitor --interval 0", expect="--interval must be between"),
    case("monitor-interval-negative", "monitor --interval -1", expect="--interval must be between"),
    case("monitor-interval-huge", "monitor --interval 1e9", expect="--interval must be between"),
    case("monitor-interval-nan", "monitor --interval nan", expect="--interval must be between"),
    case("monitor-interval-word", "monitor --interval fast", expect="invalid float value: 'fast'"),
    case("monitor-seconds-zero", "monitor --seconds 0", expect="--seconds must be more than 0"),
    case("monitor-seconds-negative", "monitor --seconds -10", expect="--seconds must be more than 0"),
    case("monitor-seconds-nan", "monitor --seconds nan", expect="--seconds must be a finite number"),
    case("monitor-seconds-inf", "monitor --seconds inf", expect="--seconds must be a finite number"),
    case(
        "monitor-server-scheme", "monitor --server ftp://models.example", expect="only http:// and https://"
    ),
    case(
        "monitor-server-timeout-nan",
        "monitor --server http://127.0.0.1:8080 --timeout nan",
        expect="--timeout",
    ),
    case("monitor-prometheus-port", "monitor --prometheus 99999999", expect="port must be between"),
    case("monitor-prometheus-word", "monitor --prometheus everywhere", expect="give host:port or port"),
    # ---- server-bench -----------------------------------------------------------------------------
    case("server-bench-no-url", "server-bench", expect="the following arguments are required: url"),
    case("server-bench-scheme", "server-bench ftp://models.example", expect="only http:// and https://"),
    case("server-bench-bad-url", "server-bench http://[::1", expect="is not a server url"),
    case("server-bench-nothing-listens", "server-bench {closed-url}", expect="refused the connection"),
    case("server-bench-concurrency-zero", "server-bench {closed-url} -c 0", expect="between 1 and 512"),
    case(
        "server-bench-concurrency-word", "server-bench {closed-url} -c many", expect="'many' is not a whole"
    ),
    case("server-bench-concurrency-range", "server-bench {closed-url} -c 1-100000000", expect="not a whole"),
    case("server-bench-requests-zero", "server-bench {closed-url} -n 0", expect="--requests must be between"),
    case("server-bench-requests-huge", "server-bench {closed-url} -n 99999999", expect="--requests must be"),
    case("server-bench-prompt-negative", "server-bench {closed-url} -p -5", expect="--prompt-tokens must be"),
    case("server-bench-gen-zero", "server-bench {closed-url} -g 0", expect="--gen-tokens must be between"),
    case(
        "server-bench-timeout-nan",
        "server-bench {closed-url} --timeout nan",
        expect="timeout must be a positive",
    ),
    case("server-bench-timeout-negative", "server-bench {closed-url} --timeout -1", expect="timeout must be"),
    case("server-bench-api", "server-bench {closed-url} --api grpc", expect="invalid choice: 'grpc'"),
    # ---- quantize --------------------------------------------------------------------------------
    case("quantize-nothing", "quantize", expect="quantize needs a source file and --type"),
    case("quantize-no-type", "quantize {demo}", expect="--type"),
    case("quantize-unknown-type", "quantize {demo} -q Q3_X_XL", expect="q3_x_xl"),
    case("quantize-missing", "quantize {missing} -q Q8_0", expect="not found"),
    case("quantize-folder", "quantize {dir} -q Q8_0", expect="folder"),
    case("quantize-empty", "quantize {empty.gguf} -q Q8_0", expect="empty"),
    case("quantize-cut", "quantize {cut-data.gguf} -q Q8_0", expect="truncated"),
    case("quantize-key-count", "quantize {keys-minus.gguf} -q Q8_0", expect="header is corrupt"),
    case("quantize-safetensors", "quantize {model.safetensors} -q Q8_0", expect="convert"),
    case("quantize-tensor-type", "quantize {demo} -q Q8_0 --output-tensor-type Q9_9", expect="q9_9"),
    case("quantize-threads-zero", "quantize {demo} -q Q8_0 -t 0", expect="at least 1"),
    case("quantize-threads-above-cores", "quantize {demo} -q Q8_0 -t 10000", expect="logical cores"),
    case("quantize-threads-word", "quantize {demo} -q Q8_0 -t all", expect="invalid int value"),
    case("quantize-output-no-folder", "quantize {demo} -q Q8_0 -o {no-folder}", expect="does not exist"),
    case("quantize-output-is-folder", "quantize {demo} -q Q8_0 -o {dir}", expect="is a folder"),
    case("quantize-output-device", "quantize {demo} -q Q8_0 -o /dev/null", expect="not a regular file"),
    case("quantize-output-in-a-file", "quantize {demo} -q Q8_0 -o {not-a-folder}", expect="not a folder"),
    case("quantize-output-read-only", "quantize {demo} -q Q8_0 -o {read-only}/out.gguf", expect="read-only"),
    case(
        "quantize-imatrix-missing", "quantize {demo} -q IQ2_XS --imatrix {missing}", expect="does not exist"
    ),
    case(
        "quantize-imatrix-not-a-matrix",
        "quantize {demo} -q IQ2_XS --allow-requantize --imatrix {text.gguf}",
        expect="neither a gguf importance matrix",
    ),
    case(
        "quantize-imatrix-needed", "quantize {demo} -q IQ2_XS --allow-requantize", expect="llamascope imatrix"
    ),
    case("quantize-tensor-type-form", "quantize {demo} -q Q8_0 --tensor-type attn_v", expect="pattern=type"),
    case(
        "quantize-tensor-type-regex",
        "quantize {demo} -q Q8_0 --allow-requantize --tensor-type attn_(=Q8_0",
        expect="not a valid regular expression",
    ),
    case(
        "quantize-tensor-type-unknown",
        "quantize {demo} -q Q8_0 --allow-requantize --tensor-type attn=Q9_9",
        expect="q9_9",
    ),
    # ---- imatrix ---------------------------------------------------------------------------------
    case("imatrix-missing", "imatrix {missing}", expect="not found"),
    case("imatrix-folder", "imatrix {dir}", expect="folder"),
    case("imatrix-empty", "imatrix {empty.gguf}", expect="empty"),
    case("imatrix-ctx-small", "imatrix {demo} -c 8", expect="from 16 tokens"),
    case("imatrix-chunks-zero", "imatrix {demo} --chunks 0", expect="1 or more"),
    case("imatrix-threads-zero", "imatrix {demo} -t 0", expect="at least 1"),
    case("imatrix-text-missing", "imatrix {demo} --text {missing}", expect="does not exist"),
    case("imatrix-text-folder", "imatrix {demo} --text {dir}", expect="folder"),
    case("imatrix-text-empty", "imatrix {demo} --text {blank.jsonl} -o {dir}/m.gguf", expect="empty"),
    case("imatrix-output-no-folder", "imatrix {demo} -o {no-folder}", expect="does not exist"),
    case("imatrix-output-is-folder", "imatrix {demo} -o {dir}", expect="is a folder"),
    case("imatrix-output-read-only", "imatrix {demo} -o {read-only}/m.gguf", expect="read-only"),
    # ---- advise and quantize to a target -----------------------------------------------------------
    case("advise-no-model", "advise", expect="the following arguments are required: model"),
    case("advise-missing-model", "advise {missing}", expect="does not exist"),
    case("advise-folder-model", "advise {dir}", expect="is a folder"),
    case("advise-text-model", "advise {text.gguf}", expect="not a recognised model"),
    case("advise-quantized-source", "advise {demo} --types Q8_0", expect="already quantized"),
    case("advise-max-memory", "advise {demo} --max-memory lots", expect="is not a size"),
    case("advise-min-tg-negative", "advise {demo} --min-tg=-5", expect="0 or more"),
    case("advise-min-tg-nan", "advise {demo} --min-tg nan", expect="0 or more"),
    case("advise-types-unknown", "advise {demo} --types Q9_9", expect="unknown quantization type"),
    case("advise-types-empty", "advise {demo} --types ,", expect="names no type"),
    case("advise-speed-reps", "advise {demo} --speed-reps 0", expect="1 or more"),
    case("advise-eval-ctx", "advise {demo} --eval-ctx 4", expect="even number"),
    case("advise-imatrix-not-a-matrix", "advise {demo} --imatrix {short.txt}", expect="importance matrix"),
    case("advise-imatrix-folder", "advise {demo} --imatrix {dir}", expect="is a folder"),
    case("advise-text-missing", "advise {demo} --text {missing}", expect="does not exist"),
    case(
        "advise-calibration-is-evaluation",
        "advise {demo} --allow-requantize --types Q8_0 --calibration {short.txt} --text {short.txt}",
        expect="same content",
    ),
    case("advise-keep-no-folder", "advise {demo} --keep {no-folder}", expect="does not exist"),
    case("quantize-target-not-a-size", "quantize {demo} --target-size huge", expect="is not a size"),
    case("quantize-target-and-bpw", "quantize {demo} --target-size 80MiB --target-bpw 5", expect="not both"),
    case("quantize-target-bpw-nan", "quantize {demo} --target-bpw nan", expect="not a quantization"),
    case(
        "quantize-target-and-type", "quantize {demo} -q Q8_0 --target-size 80MiB", expect="leave out --type"
    ),
    case(
        "quantize-target-above-source",
        "quantize {demo} --target-size 1TiB --allow-requantize",
        expect="not below the source",
    ),
    # ---- eval ------------------------------------------------------------------------------------
    case("eval-no-model", "eval", expect="the following arguments are required: model"),
    case("eval-nothing-to-do", "eval {demo}", expect="eval needs --ppl"),
    case("eval-missing-model", "eval {missing} --ppl default", expect="not found"),
    case("eval-folder-model", "eval {dir} --ppl default", expect="folder"),
    case("eval-empty-model", "eval {empty.gguf} --ppl default", expect="empty"),
    case("eval-cut-model", "eval {cut-header.gguf} --ppl default", expect="truncated"),
    case("eval-text-model", "eval {text.gguf} --ppl default", expect="not a recognised model"),
    case("eval-ppl-missing", "eval {demo} --ppl {missing}", expect="does not exist"),
    case("eval-ppl-folder", "eval {demo} --ppl {dir}", expect="is a folder"),
    case("eval-ppl-device", "eval {demo} --ppl /dev/zero", expect="not a regular file"),
    case("eval-ppl-empty", "eval {demo} --ppl {empty.txt}", expect="is empty"),
    case("eval-ppl-blank", "eval {demo} --ppl {blank.txt}", expect="is empty"),
    case("eval-ppl-binary", "eval {demo} --ppl {binary.txt}", expect="not a text file"),
    case("eval-ctx-zero", "eval {demo} --ppl default --ctx 0", expect="at least 8 tokens"),
    case("eval-ctx-odd", "eval {demo} --ppl default --ctx 513", expect="even number"),
    case("eval-ctx-negative", "eval {demo} --ppl default -c -512", expect="at least 8 tokens"),
    case("eval-ctx-past-uint32", "eval {demo} --ppl default -c 1099511627776", expect="beyond what"),
    case("eval-chunks-zero", "eval {demo} --ppl default --chunks 0", expect="chunk limit"),
    case("eval-threads-zero", "eval {demo} --ppl default -t 0", expect="at least 1"),
    case("eval-threads-above-cores", "eval {demo} --ppl default -t 999", expect="logical cores"),
    case("eval-kld-base-without-text", "eval {demo} --kld-base {demo}", expect="--kld-base needs --ppl"),
    case("eval-kld-base-missing", "eval {demo} --ppl default --kld-base {missing}", expect="not found"),
    case("eval-kld-both", "eval {demo} --kld-base {demo} --kld-logits x", expect="not allowed with"),
    case("eval-kld-logits-missing", "eval {demo} --kld-logits {missing}", expect="does not exist"),
    case("eval-kld-logits-folder", "eval {demo} --kld-logits {dir}", expect="is a folder"),
    case("eval-kld-logits-device", "eval {demo} --kld-logits /dev/zero", expect="not a regular file"),
    case("eval-save-without-text", "eval {demo} --mc x --save-logits l.bin", expect="needs --ppl"),
    case(
        "eval-save-no-folder", "eval {demo} --ppl default --save-logits {no-folder}", expect="does not exist"
    ),
    case("eval-save-is-folder", "eval {demo} --ppl default --save-logits {dir}", expect="is a folder"),
    case(
        "eval-save-device", "eval {demo} --ppl default --save-logits /dev/null", expect="not a regular file"
    ),
    case(
        "eval-save-read-only",
        "eval {demo} --ppl default --save-logits {read-only}/base.logits",
        expect="read-only",
    ),
    case("eval-mc-no-format", "eval {demo} --mc {long-field.csv}", expect="--mc needs --format"),
    case("eval-mc-bad-format", "eval {demo} --mc x.csv --format gsm8k", expect="invalid choice"),
    case("eval-mc-missing", "eval {demo} --mc {missing} --format mmlu", expect="not found"),
    case("eval-mc-folder", "eval {demo} --mc {dir} --format arc", expect="is a folder"),
    case("eval-mc-device", "eval {demo} --mc /dev/zero --format mmlu", expect="not a regular file"),
    case("eval-mc-empty", "eval {demo} --mc {empty.txt} --format mmlu", expect="holds no mmlu items"),
    case("eval-mc-blank-jsonl", "eval {demo} --mc {blank.jsonl} --format arc", expect="no arc items"),
    case("eval-mmlu-long-field", "eval {demo} --mc {long-field.csv} --format mmlu", expect="131,072"),
    case("eval-mmlu-unclosed-quote", "eval {demo} --mc {unclosed.csv} --format mmlu", expect="quote"),
    case("eval-mmlu-columns", "eval {demo} --mc {columns.csv} --format mmlu", expect="6 columns"),
    case("eval-mmlu-answer", "eval {demo} --mc {answer.csv} --format mmlu", expect="a, b, c or d"),
    case("eval-mmlu-latin1", "eval {demo} --mc {latin1.csv} --format mmlu", expect="not utf-8"),
    case("eval-mmlu-a-model", "eval {demo} --mc {demo} --format mmlu", expect="not utf-8"),
    case(
        "eval-hellaswag-nested",
        "eval {demo} --mc {nested.jsonl} --format hellaswag",
        expect="nested too deeply",
    ),
    case("eval-arc-nested", "eval {demo} --mc {nested.jsonl} --format arc", expect="nested too deeply"),
    case(
        "eval-hellaswag-huge-int",
        "eval {demo} --mc {huge-int.jsonl} --format hellaswag",
        expect="4,300 digits",
    ),
    case(
        "eval-hellaswag-not-json",
        "eval {demo} --mc {not-json.jsonl} --format hellaswag",
        expect="line 2: not json",
    ),
    case("eval-arc-a-list", "eval {demo} --mc {list.jsonl} --format arc", expect="expected a json object"),
    case(
        "eval-hellaswag-fields",
        "eval {demo} --mc {hellaswag-fields.jsonl} --format hellaswag",
        expect="not a hellaswag item",
    ),
    case(
        "eval-hellaswag-label",
        "eval {demo} --mc {hellaswag-label.jsonl} --format hellaswag",
        expect="label indexing",
    ),
    case("eval-arc-fields", "eval {demo} --mc {arc-fields.jsonl} --format arc", expect="not an arc item"),
    case("eval-arc-answer-key", "eval {demo} --mc {arc-key.jsonl} --format arc", expect="answerkey 'z'"),
    # ---- tune ------------------------------------------------------------------------------------
    case("tune-missing", "tune {missing}", expect="not found"),
    case("tune-folder", "tune {dir}", expect="folder"),
    case("tune-empty", "tune {empty.gguf}", expect="empty"),
    case("tune-cut", "tune {cut-data.gguf}", expect="truncated"),
    case("tune-key-count", "tune {keys-plus.gguf}", expect="header is corrupt"),
    case("tune-objective-word", "tune --objective fastest", expect="objective 'fastest'"),
    case("tune-objective-zero", "tune --objective tg:0", expect="needs prompt or generated tokens"),
    case("tune-objective-huge", "tune --objective pp:99999999999", expect="largest is 1,048,576"),
    case("tune-objective-mix-one", "tune --objective mix:512", expect="mix takes two numbers"),
    case("tune-trials-zero", "tune --trials 0", expect="at least 2 trials are needed"),
    case("tune-repetitions-zero", "tune -r 0", expect="-r must be at least 1"),
    case("tune-compare-rounds-zero", "tune --compare-rounds 0", expect="--compare-rounds must be at least 1"),
    case("tune-time-budget-nan", "tune --time-budget nan", expect="--time-budget must be a finite number"),
    case("tune-time-budget-negative", "tune --time-budget -60", expect="--time-budget must be more than 0"),
    case("tune-trial-timeout-zero", "tune --trial-timeout 0", expect="--trial-timeout must be more than 0"),
    case("tune-trial-timeout-inf", "tune --trial-timeout inf", expect="finite number"),
    case("tune-warmup-negative", "tune --warmup -1", expect="--warmup must be 0 or more"),
    case("tune-warmup-nan", "tune --warmup nan", expect="--warmup must be a finite number"),
    case("tune-ctx-zero", "tune -c 0", expect="n_ctx must be between 1"),
    case("tune-ctx-huge", "tune -c 99999999999", expect="n_ctx must be between 1"),
    case("tune-storage-folder", "tune --storage {dir}", expect="is a folder"),
    case("tune-storage-not-sqlite", "tune --storage {studies.sqlite3}", expect="is not an sqlite database"),
    case("tune-storage-device", "tune --storage /dev/null", expect="not a regular file"),
    case("tune-storage-no-folder", "tune --storage {no-folder}", expect="does not exist"),
    case("tune-storage-read-only", "tune --storage {read-only}/studies.sqlite3", expect="read-only"),
    case("tune-trials-word", "tune --trials lots", expect="invalid int value: 'lots'"),
    # ---- score (LocalScore) ----------------------------------------------------------------------
    case("score-missing", "score {missing}", expect="not found"),
    case("score-folder", "score {dir}", expect="folder"),
    case("score-device", "score /dev/null", expect="not a regular file"),
    case("score-empty", "score {empty.gguf}", expect="empty"),
    case("score-cut", "score {cut-data.gguf}", expect="truncated"),
    case("score-quick-and-reps", "score --quick -r 4", expect="give --quick or -r, not both"),
    case("score-reps-zero", "score -r 0", expect="-r must be between 1 and 1000"),
    case("score-max-ctx-small", "score --max-ctx 4", expect="--max-ctx must be at least 16"),
    case("score-max-ctx-above-training", "score --max-ctx 9000", expect="above the model's training context"),
    case("score-threads-above-cores", "score -t 100000", expect="logical cores"),
    case("score-unknown-run", "score --run 987654", expect="there is no run 987654"),
)


def _run(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # The user folders of tests/conftest.py, and a log folder of this module's own: a case that
    # reached the last resort would leave its report there, and the assertion below names it.
    return os.environ | {"XDG_STATE_HOME": str(tmp_path_factory.mktemp("state"))}


def test_the_battery_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {c.args[0] for c in CASES}
    from cli.main import build_parser

    parser = build_parser()
    listed = next(a for a in parser._actions if a.dest == "command").choices
    assert set(listed) <= commands, set(listed) - commands


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_message_and_no_traceback(
    bad: Case, files: dict[str, str], env: dict[str, str]
) -> None:
    args = tuple(re.sub(r"\{([^}]+)\}", lambda m: files[m.group(1)], a) for a in bad.args)
    result = _run(args, env)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "failed unexpectedly" not in result.stderr, result.stderr  # the last resort is for bugs
    assert result.returncode not in (0, 130), (result.returncode, output)
    message = result.stderr.lower()
    for fragment in bad.expect:
        assert fragment.lower() in message, f"{fragment!r} not in stderr:\n{result.stderr}"


# ---- the last resort ------------------------------------------------------------------------------


def test_an_unexpected_failure_is_one_line_and_a_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No bad input reaches this (the battery above proves it), so a bug is planted: the history
    # listing fails in a way no command expects.
    from app.bench import history
    from cli import main

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def broken(self: history.HistoryStore, **_: object) -> list[history.RunRow]:
        raise KeyError("planted")

    monkeypatch.setattr(history.HistoryStore, "runs", broken)
    assert main.main(["history"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    (line,) = err.splitlines()
    log = main.crash_log_path()
    assert log.startswith(str(tmp_path / "state"))
    assert "history failed unexpectedly" in line and "KeyError: 'planted'" in line
    assert "at cli/bench.py:" in line and f"the details are in {log}" in line
    report = Path(log).read_text()
    assert "command: llamascope history" in report and "Traceback" in report
    assert "raise KeyError" in report  # the traceback's source lines: where the failure happened


def test_a_failure_on_a_background_thread_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    from cli import main

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def fails() -> None:
        raise ValueError("planted on a thread")

    def command(arguments: list[str]) -> int:
        worker = threading.Thread(target=fails, name="llamascope-planted")
        worker.start()
        worker.join()
        return 0

    monkeypatch.setattr(main, "_main", command)
    assert main.main(["monitor"]) == 0  # the command itself finished
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert "llamascope-planted (background) failed unexpectedly (ValueError: planted on a thread" in line
    assert "Traceback" not in err and "thread: llamascope-planted" in Path(main.crash_log_path()).read_text()
    assert threading.excepthook is not main._thread_failed  # put back once the command returned


def test_a_log_that_cannot_be_written_is_said_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import main

    blocker = tmp_path / "state"
    blocker.write_text("a file where the log folder would be")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))

    def command(arguments: list[str]) -> int:
        raise RuntimeError("planted")

    monkeypatch.setattr(main, "_main", command)
    assert main.main(["info"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "info failed unexpectedly (RuntimeError: planted" in line
    assert f"the details could not be written to {main.crash_log_path()}" in line
