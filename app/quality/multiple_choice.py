"""Multiple-choice benchmarks (HellaSwag, ARC, MMLU) scored by log-likelihood, as llama.cpp does.

Each item is a context and a few continuations. For every continuation, the text
`context + continuation` is tokenized (with BOS when the vocabulary adds one); the tokens all
choices share form the common prefix, which is evaluated once; each choice's remaining tokens
are scored by the sum of their log-probabilities given everything before them. This is
llama-perplexity's `hellaswag_score` / `multiple_choice_score` procedure.

Two accuracies are reported:
- `accuracy`: the choice with the highest total log-likelihood is the answer;
- `accuracy_norm`: the highest *mean* log-likelihood per token (length-normalised). This is
  the figure llama.cpp's HellaSwag and multiple-choice scores report, so it is the one to
  compare with llama.cpp's numbers.

Formats (the data files are the user's; LlamaScope ships only tiny samples for its tests):
- HellaSwag JSONL: {"activity_label", "ctx_a", "ctx_b" (or "ctx"), "endings": [4], "label"};
  preprocessed as lm-evaluation-harness and llama.cpp's hellaswag data do
  ("<activity>: <ctx_a> <Ctx_b>", bracketed tags removed), continuation " <ending>".
- ARC JSONL: {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"};
  context "Question: <stem>\\nAnswer:", continuation " <choice text>" (lm-evaluation-harness).
- MMLU CSV (the original test files, no header): question, four options, answer letter;
  context "<question>\\nA. …\\nB. …\\nC. …\\nD. …\\nAnswer:", continuation " A" … " D"
  (lm-evaluation-harness's zero-shot MMLU; the subject line is omitted as the CSV does not
  carry it). With one-token continuations both accuracies coincide.

A result exists only when every item was scored: a cancelled run raises EvalCancelled and shows
no score.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from app.llama.driver import CancelFlag
from app.quality.eval_model import EvalModel
from app.quality.eval_types import EvalCancelled, EvalError
from app.quality.metrics import token_nll

FORMATS = ("hellaswag", "arc", "mmlu")


class BenchmarkFileError(EvalError):
    """A benchmark data file that cannot be read; the message names the line and the problem."""


@dataclass(frozen=True)
class MCItem:
    """One question: a context, its candidate continuations and the index of the right one."""

    item_id: str
    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class MCItemResult:
    item_id: str
    answer: int
    predicted: int  # argmax of total log-likelihood
    predicted_norm: int  # argmax of mean log-likelihood per token
    log_likelihoods: tuple[float, ...]
    n_tokens: tuple[int, ...]


@dataclass(frozen=True)
class MCProgress:
    item: int  # items done, 1-based
    n_items: int
    accuracy: float  # running, 0..1
    accuracy_norm: float
    elapsed_s: float


@dataclass(frozen=True)
class MCResult:
    """A benchmark score computed over every item of a data file."""

    model_path: str
    dataset_path: str
    format: str
    n_items: int
    accuracy: float  # 0..1
    accuracy_norm: float  # 0..1, llama.cpp's figure
    accuracy_ci95: tuple[float, float]  # Wilson score interval, as llama.cpp prints it
    accuracy_norm_ci95: tuple[float, float]
    items: tuple[MCItemResult, ...]
    elapsed_s: float

    @property
    def benchmark(self) -> str:
        return {"hellaswag": "HellaSwag", "arc": "ARC", "mmlu": "MMLU"}.get(self.format, self.format)


def wilson_interval(successes: int, n: int, z: float = 1.95996398454) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (llama.cpp's hellaswag output)."""
    if n == 0:
        return (0.0, 1.0)
    freq = successes / n
    zz = z * z / n
    cnf = zz * math.sqrt(n * (4.0 * freq * (1 - freq) + zz)) / (2 * z)
    return ((freq + zz * 0.5 - cnf) / (1.0 + zz), (freq + zz * 0.5 + cnf) / (1.0 + zz))


# ---- readers -----------------------------------------------------------------------------------
def _hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _jsonl(path: str) -> list[tuple[int, dict[str, object]]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{os.path.basename(path)} line {number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkFileError(f"{where}: not JSON ({exc.msg}).") from None
            except RecursionError:
                raise BenchmarkFileError(f"{where}: the JSON is nested too deeply to be an item.") from None
            except ValueError:  # json's only other failure: an integer past Python's digit limit
                raise BenchmarkFileError(
                    f"{where}: a number of more than 4,300 digits; not an item."
                ) from None
            if not isinstance(value, dict):
                raise BenchmarkFileError(f"{where}: expected a JSON object.")
            rows.append((number, value))
    return rows


def load_hellaswag(path: str) -> list[MCItem]:
    items = []
    for number, row in _jsonl(path):
        where = f"{os.path.basename(path)} line {number}"
        try:
            if "ctx_a" in row:
                ctx = f"{row['ctx_a']} {str(row.get('ctx_b', '')).capitalize()}".strip()
            else:
                ctx = str(row["ctx"])
            label = str(row.get("activity_label", "")).strip()
            context = _hellaswag_preprocess(f"{label}: {ctx}" if label else ctx)
            endings = row["endings"]
            answer = int(str(row["label"]))
        except (KeyError, ValueError) as exc:
            raise BenchmarkFileError(
                f"{where}: not a HellaSwag item (needs ctx, endings, label): {exc}."
            ) from None
        if not isinstance(endings, list) or len(endings) < 2 or not 0 <= answer < len(endings):
            raise BenchmarkFileError(f"{where}: needs at least two endings and a label indexing one of them.")
        choices = tuple(" " + _hellaswag_preprocess(str(e)) for e in endings)
        items.append(MCItem(str(row.get("ind", number)), context, choices, answer))
    return items


def load_arc(path: str) -> list[MCItem]:
    items = []
    for number, row in _jsonl(path):
        where = f"{os.path.basename(path)} line {number}"
        try:
            question = row["question"]
            assert isinstance(question, dict)
            stem = str(question["stem"])
            raw_choices = question["choices"]
            assert isinstance(raw_choices, list)
            labels = [str(c["label"]) for c in raw_choices]
            texts = [str(c["text"]) for c in raw_choices]
            key = str(row["answerKey"])
        except (KeyError, TypeError, AssertionError):
            raise BenchmarkFileError(
                f"{where}: not an ARC item "
                "(needs question.stem, question.choices[{text, label}], answerKey)."
            ) from None
        if key not in labels or len(texts) < 2:
            raise BenchmarkFileError(f"{where}: answerKey {key!r} is not one of the choice labels {labels}.")
        items.append(
            MCItem(
                str(row.get("id", number)),
                f"Question: {stem}\nAnswer:",
                tuple(" " + t for t in texts),
                labels.index(key),
            )
        )
    return items


def load_mmlu(path: str) -> list[MCItem]:
    items = []
    letters = "ABCD"
    with open(path, encoding="utf-8", newline="") as f:
        for number, row in enumerate(_csv_rows(path, f), 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{os.path.basename(path)} line {number}"
            if len(row) != 6:
                raise BenchmarkFileError(
                    f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}."
                )
            answer = row[5].strip().upper()
            if answer not in letters:
                if number == 1:  # a header row
                    continue
                raise BenchmarkFileError(f"{where}: the answer must be A, B, C or D, not {row[5]!r}.")
            question = row[0].strip()
            options = "".join(
                f"\n{letter}. {text.strip()}" for letter, text in zip(letters, row[1:5], strict=False)
            )
            items.append(
                MCItem(
                    str(number),
                    f"{question}{options}\nAnswer:",
                    tuple(f" {c}" for c in letters),
                    letters.index(answer),
                )
            )
    return items


def _csv_rows(path: str, f: TextIO) -> Iterator[list[str]]:
    """csv.reader's rows, with its errors (a field past its 131,072-character limit, which is what an
    unclosed quote makes of the rest of a file) as BenchmarkFileError naming the line."""
    reader = csv.reader(f)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            where = f"{os.path.basename(path)} line {reader.line_num}"
            if "field limit" in str(exc):
                raise BenchmarkFileError(
                    f"{where}: a field is longer than {csv.field_size_limit():,} characters; an unclosed "
                    'quote (") makes the rest of the file one field. Check the quotes there.'
                ) from None
            raise BenchmarkFileError(f"{where}: not CSV ({exc}).") from None
        yield row


def load_items(path: str, fmt: str) -> list[MCItem]:
    """Read a benchmark file in `fmt` ("hellaswag", "arc" or "mmlu"); raises BenchmarkFileError."""
    if fmt not in FORMATS:
        raise BenchmarkFileError(f"Unknown benchmark format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if os.path.isdir(path):
        raise BenchmarkFileError(f"{path} is a folder; give the benchmark's data file.")
    if not os.path.exists(path):
        raise BenchmarkFileError(f"Benchmark file not found: {path}.")
    if not os.path.isfile(path):
        raise BenchmarkFileError(f"{path} is not a regular file (a device, pipe or socket).")
    try:
        items = {"hellaswag": load_hellaswag, "arc": load_arc, "mmlu": load_mmlu}[fmt](path)
    except UnicodeDecodeError as exc:
        raise BenchmarkFileError(
            f"{os.path.basename(path)} is not UTF-8 text (a 0x{exc.object[exc.start]:02x} byte); "
            "save it as UTF-8."
        ) from None
    except OSError as exc:
        raise BenchmarkFileError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    if not items:
        raise BenchmarkFileError(f"{os.path.basename(path)} holds no {fmt} items.")
    return items


# ---- scoring -----------------------------------------------------------------------------------
def _tokenize_item(model: EvalModel, item: MCItem) -> tuple[list[np.ndarray], int]:
    seqs = [model.tokenize(item.context + choice) for choice in item.choices]
    shortest = min(len(s) for s in seqs)
    prefix = 0
    while prefix < shortest - 1 and all(s[prefix] == seqs[0][prefix] for s in seqs):
        prefix += 1
    return seqs, prefix


def score_item(model: EvalModel, item: MCItem) -> MCItemResult:
    """Log-likelihood of every choice of one item (prefix evaluated once, each tail after it)."""
    seqs, prefix = _tokenize_item(model, item)
    if prefix < 1:
        raise EvalError(f"Item {item.item_id}: the choices share no context tokens; it cannot be scored.")
    model.clear()
    first_logits = model.decode(seqs[0][:prefix], 0, None)[0].copy()  # predicts the first tail token
    totals: list[float] = []
    counts: list[int] = []
    for seq in seqs:
        tail = seq[prefix:]
        model.remove_from(prefix)
        nll_first = token_nll(first_logits[None, :], tail[:1])
        if len(tail) > 1:
            want = np.ones(len(tail), dtype=np.int8)
            want[-1] = 0
            logits = model.decode(tail, prefix, want)
            nll_rest = token_nll(logits, tail[1:])
        else:
            nll_rest = np.empty(0)
        totals.append(-float(nll_first.sum() + nll_rest.sum()))
        counts.append(len(tail))
    ll = np.array(totals)
    return MCItemResult(
        item_id=item.item_id,
        answer=item.answer,
        predicted=int(np.argmax(ll)),
        predicted_norm=int(np.argmax(ll / np.array(counts))),
        log_likelihoods=tuple(totals),
        n_tokens=tuple(counts),
    )


def evaluate_multiple_choice(
    model_path: str,
    items: Sequence[MCItem],
    *,
    dataset_path: str = "",
    fmt: str = "",
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    cancel: CancelFlag | None = None,
    on_progress: Callable[[MCProgress], None] | None = None,
    override_memory: bool = False,
) -> MCResult:
    """Score every item; the context is sized to the longest item. Refused with the numbers
    (InsufficientMemoryError) before loading when that will not fit, unless `override_memory`."""
    if not items:
        raise EvalError("There are no benchmark items to score.")
    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    with EvalModel(model_path, n_ctx=512, vocab_only=True) as vocab:
        longest = max(len(vocab.tokenize(item.context + choice)) for item in items for choice in item.choices)
    n_ctx = max(512, -(-(longest + 1) // 256) * 256)
    results: list[MCItemResult] = []
    correct = correct_norm = 0
    with EvalModel(
        model_path,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
        cancel=cancel,
        override_memory=override_memory,
    ) as model:
        for i, item in enumerate(items):
            if cancel.is_set():
                raise EvalCancelled("Benchmark cancelled; no score is shown for a partial run.")
            r = score_item(model, item)
            results.append(r)
            correct += r.predicted == r.answer
            correct_norm += r.predicted_norm == r.answer
            if on_progress is not None:
                try:
                    on_progress(
                        MCProgress(
                            i + 1,
                            len(items),
                            correct / (i + 1),
                            correct_norm / (i + 1),
                            time.perf_counter() - t0,
                        )
                    )
                except Exception:
                    pass  # a listener's bug must not stop the benchmark
        path = model.path
    n = len(results)
    return MCResult(
        model_path=path,
        dataset_path=os.path.abspath(dataset_path) if dataset_path else "",
        format=fmt,
        n_items=n,
        accuracy=correct / n,
        accuracy_norm=correct_norm / n,
        accuracy_ci95=wilson_interval(correct, n),
        accuracy_norm_ci95=wilson_interval(correct_norm, n),
        items=tuple(results),
        elapsed_s=time.perf_counter() - t0,
    )


def run_benchmark_file(
    model_path: str,
    path: str,
    fmt: str,
    *,
    n_threads: int | None = None,
    cancel: CancelFlag | None = None,
    on_progress: Callable[[MCProgress], None] | None = None,
    override_memory: bool = False,
) -> MCResult:
    """load_items + evaluate_multiple_choice."""
    items = load_items(path, fmt)
    return evaluate_multiple_choice(
        model_path,
        items,
        dataset_path=path,
        fmt=fmt,
        n_threads=n_threads,
        cancel=cancel,
        on_progress=on_progress,
        override_memory=override_memory,
    )


__all__ = [
    "FORMATS",
    "BenchmarkFileError",
    "MCItem",
    "MCItemResult",
    "MCProgress",
    "MCResult",
    "evaluate_multiple_choice",
    "load_items",
    "run_benchmark_file",
    "score_item",
    "wilson_interval",
]
