"""Quantize to a target size: the size parser, the knapsack on constructed figures, and a real run on
the demo model's F16 base through llama.cpp's quantizer (dry runs and real files) and real KLD."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from app.model.gguf_info import read_metadata
from app.quality.eval_types import EvalSettings
from app.quant.measuring import LocalEvalRunner, Stop, dry_run
from app.quant.plan import QuantizeRequest, f16_base_request
from app.quant.quantize import quantize
from app.quant.target import (
    KEY_TARGET,
    KEY_TARGET_OVERRIDES,
    KEY_TARGET_UPPER,
    GroupSensitivity,
    Target,
    TargetError,
    TargetQuantizer,
    TargetRequest,
    choose_groups,
    parse_size,
)
from cli.main import main as cli_main

TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "resources", "eval", "python-docs-excerpt.txt")
SETTINGS = EvalSettings(n_ctx=128, n_chunks=2, n_threads=2)


@pytest.fixture(scope="module")
def f16_base(demo_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("target") / "demo.F16.gguf")
    return quantize(f16_base_request(demo_model, out, n_threads=2)).output_path


# ---- sizes --------------------------------------------------------------------------------------
def test_sizes_are_read_with_their_units() -> None:
    assert parse_size("80MiB") == 80 * 1024 * 1024
    assert parse_size("80 MB") == 80_000_000
    assert parse_size("1.5G") == int(1.5 * 1024**3)
    assert parse_size("123456") == 123456
    assert parse_size("2kib") == 2048


@pytest.mark.parametrize("text", ["", "eighty", "80XB", "-5MiB", "0", "MiB", "1.2.3G"])
def test_a_bad_size_is_refused_with_what_a_size_looks_like(text: str) -> None:
    with pytest.raises(TargetError, match="80MiB|larger than 0"):
        parse_size(text)


def test_a_target_is_a_size_or_bits_per_weight_not_both() -> None:
    with pytest.raises(TargetError):
        Target(size_bytes=1, bits_per_weight=4.0)
    with pytest.raises(TargetError):
        Target()
    with pytest.raises(TargetError, match="not a quantization"):
        Target(bits_per_weight=0)


# ---- the choice, on constructed figures --------------------------------------------------------
def _group(name: str, saved: int, added: float) -> GroupSensitivity:
    return GroupSensitivity(name, f"^{name}$", saved, 0.1 + added, added)


def test_the_knapsack_drops_the_cheapest_set_that_saves_enough() -> None:
    groups = (
        _group("a", 100, 0.010),
        _group("b", 60, 0.004),
        _group("c", 50, 0.004),
        _group("d", 200, 0.050),
        _group("e", 30, 0.0),
    )
    need = 120
    sizes = {g.name: g.saved_bytes for g in groups}

    def slack(dropped: tuple[str, ...]) -> int:
        return sum(sizes[d] for d in dropped) - need

    chosen = choose_groups(groups, need, slack)
    # Brute force over every subset: the least added KLD that saves enough.
    best = min(
        (
            s
            for n in range(len(groups) + 1)
            for s in itertools.combinations(groups, n)
            if sum(g.saved_bytes for g in s) >= need
        ),
        key=lambda s: sum(g.added_kld for g in s),
    )
    assert sum(sizes[d] for d in chosen) >= need
    assert sum(g.added_kld for g in groups if g.name in chosen) == pytest.approx(
        sum(g.added_kld for g in best)
    )
    assert set(chosen) == {"b", "c", "e"}  # 140 bytes for 0.008, rather than a (0.010) or d
    # Nothing dropped could come back without breaking the target.
    for d in chosen:
        assert slack(tuple(x for x in chosen if x != d)) < 0


def test_nothing_is_dropped_when_nothing_need_be_and_too_little_is_refused() -> None:
    groups = (_group("a", 100, 0.01),)
    assert choose_groups(groups, 0, lambda d: 0) == ()
    with pytest.raises(TargetError):
        choose_groups(groups, 101, lambda d: -1)


# ---- the real thing -----------------------------------------------------------------------------
def _file_bytes(source: str, type_name: str) -> int:
    """A standard mix's file size, as the quantizer's dry run predicts it."""
    plans = dry_run(QuantizeRequest(source, type_name, source + f".{type_name}.gguf"), Stop())
    return sum(t.padded_bytes for t in plans)


def test_a_target_between_two_mixes_is_met_by_dropping_measured_groups(f16_base: str, tmp_path: Path) -> None:
    # Between Q4_K_S and Q4_K_M for this model (their dry-run sizes, not assumptions: with 576 columns
    # most "Q4_K" tensors fall back to Q5_0 in both, and they differ in ffn_down and attn_v).
    low, high = _file_bytes(f16_base, "Q4_K_S"), _file_bytes(f16_base, "Q4_K_M")
    target = Target(size_bytes=(low + high) // 2 + 2 * 1024 * 1024)  # + the header, which neither sum holds
    out = str(tmp_path / "mix.gguf")
    request = TargetRequest(
        f16_base, target, TEXT, SETTINGS, output=out, layer_parts=1, kinds=("ffn_down", "attn_v"), n_threads=2
    )
    phases: list[str] = []
    result = TargetQuantizer(
        request, LocalEvalRunner(n_threads=2), on_progress=lambda p: phases.append(p.phase)
    ).run()
    choice = result.choice
    assert choice.upper == "Q4_K_M" and choice.lower == "Q4_K_S"
    assert {g.name for g in choice.groups} == {"ffn_down", "attn_v"}
    assert choice.dropped, "the target lies below Q4_K_M, so something must be dropped"
    assert result.met and os.path.getsize(out) == result.quantized.output_bytes <= target.size_bytes
    # The prediction from dry-run sums is the file, to within the header's estimate (<= 512 bytes over).
    assert 0 <= choice.expected_file_bytes - result.quantized.output_bytes <= 4096
    # Every dropped group back would break the target: the budget is used.
    for g in choice.groups:
        if g.name in choice.dropped:
            assert result.quantized.output_bytes + g.saved_bytes > target.size_bytes
    # Measured: H's KLD, each group's, and the result's, all from the same base log-probabilities.
    assert choice.upper_kld is not None and choice.upper_kld > 0
    assert result.kld is not None and result.kld.kld_mean > 0
    meta = read_metadata(out)
    assert meta[KEY_TARGET_UPPER] == "Q4_K_M" and str(meta[KEY_TARGET]).startswith("size")
    assert all(name in str(meta[KEY_TARGET_OVERRIDES]) for name in choice.dropped)
    assert {"sizes", "base", "sensitivity", "quantize", "measure"} <= set(phases)
    assert sorted(os.listdir(tmp_path)) == ["mix.gguf"]  # no work files left beside it


def test_impossible_targets_are_refused_with_the_sizes(f16_base: str, tmp_path: Path) -> None:
    def run(target: Target) -> None:
        request = TargetRequest(
            f16_base, target, TEXT, SETTINGS, output=str(tmp_path / "x.gguf"), n_threads=2
        )
        TargetQuantizer(request, LocalEvalRunner()).run()

    with pytest.raises(TargetError, match="not below the source's size"):
        run(Target(size_bytes=os.path.getsize(f16_base)))
    with pytest.raises(TargetError, match="not below the source's"):
        run(Target(bits_per_weight=20))
    with pytest.raises(TargetError, match="below the smallest mix this method reaches: Q"):
        run(Target(size_bytes=20 * 1024 * 1024))
    assert os.listdir(tmp_path) == []


def test_the_command_line_refuses_bad_targets(f16_base: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["quantize", f16_base, "--target-size", "80XB"]) == 2
    assert "is not a size" in capsys.readouterr().err
    assert cli_main(["quantize", f16_base, "--target-size", "80MiB", "--target-bpw", "4"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli_main(["quantize", f16_base, "--target-size", "80MiB", "--type", "Q4_K_M"]) == 2
    assert "leave out --type" in capsys.readouterr().err
    assert cli_main(["quantize", f16_base, "--target-size", "10GiB"]) == 1
    assert "not below the source's size" in capsys.readouterr().err
