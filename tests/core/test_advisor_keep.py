"""The advisor never replaces a file of the user's: the kept pick goes under a free name and the
advice reports the path it wrote. An advice on an already-quantized source says that its KLD is
measured against that quantized file. Real quantizer and real measurements on the demo model (Q4_1)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from app.bench.history import HistoryStore
from app.model.gguf_info import inspect_model
from app.quality.eval_types import EvalSettings
from app.quant.advisor import AdviceRequest, Advisor, free_path, requantization_note, reserve_free_path
from app.quant.measuring import LocalEvalRunner

TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "resources", "eval", "python-docs-excerpt.txt")
USERS = b"the user's own Q8_0, not to be touched\n"


def test_free_names_skip_every_existing_file(tmp_path: Path) -> None:
    natural = tmp_path / "Model.Q4_K_M.imatrix.gguf"
    assert free_path(str(natural)) == str(natural)
    natural.write_bytes(b"x")
    assert free_path(str(natural)) == str(tmp_path / "Model.Q4_K_M-2.imatrix.gguf")
    (tmp_path / "Model.Q4_K_M-2.imatrix.gguf").write_bytes(b"y")
    reserved = reserve_free_path(str(natural))
    assert reserved == str(tmp_path / "Model.Q4_K_M-3.imatrix.gguf") and os.path.getsize(reserved) == 0
    assert free_path(str(natural)) == str(tmp_path / "Model.Q4_K_M-4.imatrix.gguf")  # the reservation holds
    assert free_path(str(tmp_path / "Model.imatrix.gguf")) == str(tmp_path / "Model.imatrix.gguf")
    (tmp_path / "Model.Q8_0.gguf").write_bytes(b"z")
    assert free_path(str(tmp_path / "Model.Q8_0.gguf")) == str(tmp_path / "Model.Q8_0-2.gguf")


def test_the_note_names_the_sources_quantized_type(demo_model: str) -> None:
    info = inspect_model(demo_model)
    note = requantization_note(info)
    assert note is not None and note.startswith("Source is already quantized (Q4_1):")
    assert "against the Q4_1, not the original" in note
    assert requantization_note(dataclasses.replace(info, file_type="F16", quantized_from=None)) is None
    copy = requantization_note(dataclasses.replace(info, file_type="F16", quantized_from="Q4_1"))
    assert copy is not None and "copy of a Q4_1 model" in copy
    # No file type in the header (n/a): the tensors say it.
    assert "(Q4_1)" in (requantization_note(dataclasses.replace(info, file_type=None)) or "")


def test_the_kept_pick_never_replaces_a_users_file(demo_model: str, tmp_path: Path) -> None:
    keep = tmp_path / "models"
    keep.mkdir()
    stem = os.path.splitext(os.path.basename(demo_model))[0]
    users = keep / f"{stem}.Q8_0.gguf"
    users.write_bytes(USERS)
    request = AdviceRequest(
        demo_model,
        TEXT,
        types=("Q8_0",),
        settings=EvalSettings(n_ctx=128, n_chunks=2, n_threads=2),
        speed_prompt=32,
        speed_gen=8,
        speed_repetitions=1,
        n_threads=2,
        n_ctx=512,
        allow_requantize=True,
        keep_folder=str(keep),
    )
    store = HistoryStore(str(tmp_path / "history.db"))
    work = tmp_path / "work"
    work.mkdir()
    first = Advisor(request, LocalEvalRunner(n_threads=2), store=store, work_folder=str(work)).run()
    assert first.measured == 1 and first.pick is not None
    assert first.kept_path == str(keep / f"{stem}.Q8_0-2.gguf")  # the path actually written
    assert users.read_bytes() == USERS
    assert inspect_model(first.kept_path).file_type == "Q8_0"
    assert any(n.startswith("Source is already quantized (Q4_1)") for n in first.notes)

    # From the history: the pick is quantized again, into the next free name.
    second = Advisor(request, LocalEvalRunner(n_threads=2), store=store, work_folder=str(work)).run()
    assert second.reused == 1 and second.kept_path == str(keep / f"{stem}.Q8_0-3.gguf")
    assert inspect_model(second.kept_path).file_type == "Q8_0"
    assert users.read_bytes() == USERS and os.path.getsize(first.kept_path) > len(USERS)
    assert sorted(os.listdir(keep)) == sorted(
        [f"{stem}.Q8_0.gguf", f"{stem}.Q8_0-2.gguf", f"{stem}.Q8_0-3.gguf"]
    )  # no placeholder or temporary file left
