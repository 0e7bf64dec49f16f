"""Multiple-choice benchmarks: the three readers, the scoring against an independent computation,
cancel, and bad files."""

from __future__ import annotations

import math
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from app.quality.eval_model import EvalModel
from app.quality.eval_types import EvalCancelled, EvalError
from app.quality.multiple_choice import (
    BenchmarkFileError,
    MCItem,
    MCProgress,
    evaluate_multiple_choice,
    load_items,
    run_benchmark_file,
    score_item,
    wilson_interval,
)

EVAL = Path(__file__).resolve().parents[2] / "resources" / "eval"
HELLASWAG = str(EVAL / "hellaswag_sample.jsonl")
ARC = str(EVAL / "arc_sample.jsonl")
MMLU = str(EVAL / "mmlu_sample.csv")


def test_hellaswag_reader() -> None:
    items = load_items(HELLASWAG, "hellaswag")
    assert [i.answer for i in items] == [0, 1, 2, 3, 0]
    assert items[0].context == (
        "Making tea: A woman fills a kettle with water and puts it on the stove. When the water boils, she"
    )
    assert items[0].choices[0] == " pours it into a cup with a tea bag."
    assert all(len(i.choices) == 4 for i in items)


def test_hellaswag_preprocessing_drops_bracketed_tags(tmp_path: Path) -> None:
    f = tmp_path / "h.jsonl"
    f.write_text(
        '{"activity_label": "Cooking", "ctx": "A cook [header] stirs  the soup.", '
        '"endings": ["She [title]tastes it.", "x"], "label": "0"}\n'
    )
    item = load_items(str(f), "hellaswag")[0]
    assert item.context == "Cooking: A cook stirs the soup."
    assert item.choices[0] == " She. tastes it."


def test_arc_reader() -> None:
    items = load_items(ARC, "arc")
    assert [i.answer for i in items] == [0, 1, 2, 3, 0]  # answerKey "4" is the fourth label
    assert items[0].context == "Question: Which planet is closest to the Sun?\nAnswer:"
    assert items[0].choices == (" Mercury", " Mars", " Jupiter", " Neptune")
    assert len(items[4].choices) == 3


def test_mmlu_reader() -> None:
    items = load_items(MMLU, "mmlu")
    assert [i.answer for i in items] == [2, 1, 0, 3, 2]
    assert items[0].context == (
        "What is the capital of France?\nA. Berlin\nB. Madrid\nC. Paris\nD. Rome\nAnswer:"
    )
    assert items[0].choices == (" A", " B", " C", " D")
    assert "4, 9, 11 or 15" in items[4].context  # a quoted CSV field with commas


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("hellaswag", '{"ctx": "a", "endings": ["b", "c"], "label": 0}\nnot json\n', "line 2: not JSON"),
        ("hellaswag", '{"ctx": "a", "endings": ["b", "c"], "label": 5}\n', "label indexing"),
        ("hellaswag", '{"endings": ["b"], "label": 0}\n', "not a HellaSwag item"),
        (
            "arc",
            '{"question": {"stem": "q", "choices": [{"text": "a", "label": "A"}, '
            '{"text": "b", "label": "B"}]}, "answerKey": "C"}\n',
            "answerKey 'C'",
        ),
        ("arc", '{"question": "q"}\n', "not an ARC item"),
        ("mmlu", "q,a,b,c\n", "expected 6 columns"),
        ("mmlu", "q,a,b,c,d,A\nq,a,b,c,d,E\n", "answer must be A, B, C or D"),
        ("mmlu", "\n\n", "holds no mmlu items"),
    ],
)
def test_bad_benchmark_files(tmp_path: Path, fmt: str, content: str, message: str) -> None:
    f = tmp_path / "data.txt"
    f.write_text(content)
    with pytest.raises(BenchmarkFileError, match=message):
        load_items(str(f), fmt)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkFileError, match="not found"):
        load_items(str(tmp_path / "none.jsonl"), "arc")
    with pytest.raises(BenchmarkFileError, match="Unknown benchmark format"):
        load_items(ARC, "winogrande")


def test_mmlu_header_row_is_skipped(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text("question,A,B,C,D,answer\nq?,a,b,c,d,B\n")
    assert [i.answer for i in load_items(str(f), "mmlu")] == [1]


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(4, 5)
    # (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    z, n, p = 1.95996398454, 5, 0.8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((centre - half, centre + half))


def test_choice_scores_equal_an_independent_computation(demo_model: str) -> None:
    """Sum of log-probabilities of each choice's tokens, from one full-sequence evaluation each."""
    item = load_items(ARC, "arc")[1]
    with EvalModel(demo_model, n_ctx=512, n_threads=2) as m:
        r = score_item(m, item)
        seqs = [m.tokenize(item.context + c) for c in item.choices]
        prefix = 0
        while all(s[prefix] == seqs[0][prefix] for s in seqs):
            prefix += 1
        for k, seq in enumerate(seqs):
            m.clear()
            logits = m.decode(seq, 0, np.ones(len(seq), dtype=np.int8)).astype(np.float64)
            lp = logits - logits.max(1, keepdims=True)
            lp -= np.log(np.exp(lp).sum(1, keepdims=True))
            expected = sum(lp[j - 1, seq[j]] for j in range(prefix, len(seq)))
            assert r.log_likelihoods[k] == pytest.approx(expected, abs=2e-3)
            assert r.n_tokens[k] == len(seq) - prefix
    assert r.predicted == int(np.argmax(r.log_likelihoods))
    norm = np.array(r.log_likelihoods) / np.array(r.n_tokens)
    assert r.predicted_norm == int(np.argmax(norm))


def test_benchmark_scores_every_item(demo_model: str) -> None:
    seen: list[MCProgress] = []
    r = run_benchmark_file(demo_model, HELLASWAG, "hellaswag", n_threads=2, on_progress=seen.append)
    assert r.n_items == 5 and len(r.items) == 5 and r.benchmark == "HellaSwag"
    assert r.accuracy == sum(i.predicted == i.answer for i in r.items) / 5
    assert r.accuracy_norm == sum(i.predicted_norm == i.answer for i in r.items) / 5
    assert r.accuracy_norm_ci95[0] <= r.accuracy_norm <= r.accuracy_norm_ci95[1]
    assert pickle.loads(pickle.dumps((r, seen))) == (r, seen)  # plain data, for a worker process
    assert [p.item for p in seen] == [1, 2, 3, 4, 5] and seen[-1].accuracy == r.accuracy
    # Plain everyday continuations against absurd ones: even a 135M model gets most right.
    assert r.accuracy_norm >= 0.6


def test_cancel_shows_no_score(demo_model: str) -> None:
    cancel = threading.Event()

    def on_progress(p: MCProgress) -> None:
        if p.item == 2:
            cancel.set()  # as Stop does, from another thread, between items

    with pytest.raises(EvalCancelled):
        run_benchmark_file(demo_model, ARC, "arc", n_threads=2, cancel=cancel, on_progress=on_progress)


def test_cancel_before_start(demo_model: str) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EvalCancelled):
        evaluate_multiple_choice(demo_model, load_items(ARC, "arc"), cancel=cancel)


def test_no_items() -> None:
    with pytest.raises(EvalError, match="no benchmark items"):
        evaluate_multiple_choice("unused.gguf", [])


def test_items_built_in_code(demo_model: str) -> None:
    items = [MCItem("capital", "The capital city of France is", (" Paris", " a banana"), 0)]
    r = evaluate_multiple_choice(demo_model, items, n_threads=2)
    assert r.n_items == 1 and r.items[0].n_tokens[1] >= 2 and r.dataset_path == ""
