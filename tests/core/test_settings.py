"""Load/sampling settings: validation messages, llama-cpp-python mapping, dict round trips, presets."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from app.model import settings as settings_module
from app.model.fields import CACHE_TYPES, FIELD_SPECS, FieldSpec, Problem
from app.model.model_info import ModelInfo, SizeClass
from app.model.settings import (
    LOAD_FIELDS,
    RELOAD_FIELDS,
    SAMPLING_FIELDS,
    LoadSettings,
    SamplingSettings,
    SettingsError,
    UnknownSettingsWarning,
    needs_reload,
    preset_for,
    preset_for_model,
)

MANY_CORES = 256  # passed as logical_cores so thread warnings do not depend on the test machine


def make_model(**overrides: Any) -> ModelInfo:
    """A SmolLM2-135M-like ModelInfo; n_params overrides also set the size class."""
    fields: dict[str, Any] = dict(
        path="/models/SmolLM2-135M-Instruct-Q4_1.gguf",
        file_size_bytes=91_000_000,
        gguf_version=3,
        name="SmolLM2 135M Instruct",
        architecture="llama",
        n_params=134_515_008,
        size_label="135M",
        file_type="Q4_1",
        tensor_types=(),
        tensor_data_bytes=90_000_000,
        bits_per_weight=90_000_000 * 8 / 134_515_008,
        context_length=8192,
        n_layer=30,
        n_embd=576,
        n_head=9,
        n_head_kv=3,
        n_embd_head_k=64,
        n_embd_head_v=64,
        vocab_size=49152,
        chat_template=None,
    )
    fields.update(overrides)
    fields.setdefault("size_class", SizeClass.from_n_params(fields["n_params"]))
    return ModelInfo(**fields)


def load_with(**changes: Any) -> LoadSettings:
    return LoadSettings(**{"n_threads": 4, "n_threads_batch": 8, **changes})


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]


def warnings_of(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if not p.is_error]


# ---------------------------------------------------------------- defaults


def test_defaults_are_valid() -> None:
    assert LoadSettings().problems(make_model(), logical_cores=MANY_CORES) == []
    assert SamplingSettings().problems(LoadSettings()) == []
    assert LoadSettings().validate(make_model(), logical_cores=MANY_CORES) == []
    assert SamplingSettings().validate() == []


def test_load_defaults_match_llama_cpp_python() -> None:
    load = LoadSettings()
    assert (load.n_ctx, load.n_batch, load.n_ubatch, load.n_gpu_layers) == (4096, 512, 512, 0)
    assert (load.use_mmap, load.use_mlock, load.numa, load.flash_attn, load.offload_kqv) == (
        True,
        False,
        False,
        False,
        True,
    )
    assert (load.type_k, load.type_v, load.seed) == ("f16", "f16", -1)
    assert load.n_threads >= 1 and load.n_threads_batch >= 1


def test_default_threads_come_from_core_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 16 if logical else 6)
    load = LoadSettings()
    assert (load.n_threads, load.n_threads_batch) == (6, 16)


def test_physical_cores_fall_back_to_os_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)
    monkeypatch.setattr(settings_module.os, "cpu_count", lambda: 3)
    assert settings_module.count_physical_cores() == 3
    assert settings_module.count_logical_cores() == 3


def test_sampling_defaults() -> None:
    s = SamplingSettings()
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repeat_penalty) == (0.8, 0.95, 40, 0.05, 1.1)
    assert (s.presence_penalty, s.frequency_penalty) == (0.0, 0.0)
    assert (s.mirostat_mode, s.mirostat_tau, s.mirostat_eta) == (0, 5.0, 0.1)
    assert (s.max_tokens, s.stop) == (256, ())


# ---------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    ("changes", "field", "fragments"),
    [
        ({"n_ctx": 0}, "n_ctx", ["between 1 and 1048576", "(got 0)"]),
        ({"n_ctx": -5}, "n_ctx", ["between 1 and 1048576", "(got -5)"]),
        ({"n_ctx": 1_048_577}, "n_ctx", ["between 1 and 1048576"]),
        ({"n_threads": 0}, "n_threads", ["between 1 and", "(got 0)"]),
        ({"n_threads": -1}, "n_threads", ["between 1 and"]),
        ({"n_threads_batch": 0}, "n_threads_batch", ["between 1 and"]),
        ({"n_batch": 0}, "n_batch", ["between 1 and"]),
        ({"n_ubatch": 0}, "n_ubatch", ["between 1 and"]),
        ({"n_gpu_layers": -2}, "n_gpu_layers", ["between -1 and"]),
        ({"seed": -2}, "seed", ["between -1 and 4294967295", "(got -2)"]),
        ({"seed": 2**32}, "seed", ["between -1 and 4294967295"]),
        ({"type_k": "q3_k"}, "type_k", ["one of f32, f16, bf16, q8_0", "'q3_k'"]),
        ({"n_ctx": "4096"}, "n_ctx", ["whole number", "between 1 and 1048576"]),
        ({"n_ctx": 4096.0}, "n_ctx", ["whole number"]),
        ({"use_mmap": 1}, "use_mmap", ["true or false"]),
    ],
)
def test_load_errors_name_field_and_range(changes: dict[str, Any], field: str, fragments: list[str]) -> None:
    load = load_with(**changes)
    problems = errors(load.problems(logical_cores=MANY_CORES))
    assert [p.field for p in problems] == [field]
    assert problems[0].message.startswith(field + " ")
    for fragment in fragments:
        assert fragment in problems[0].message
    with pytest.raises(SettingsError) as info:
        load.validate(logical_cores=MANY_CORES)
    assert info.value.field == field
    assert str(info.value) == problems[0].message
    assert isinstance(info.value, ValueError)


def test_n_ctx_zero_message_is_exact() -> None:
    with pytest.raises(SettingsError, match=r"^n_ctx must be between 1 and 1048576 \(got 0\)$"):
        load_with(n_ctx=0).validate(logical_cores=MANY_CORES)


def test_n_ubatch_above_n_batch_is_an_error() -> None:
    with pytest.raises(SettingsError) as info:
        load_with(n_batch=512, n_ubatch=1024).validate(logical_cores=MANY_CORES)
    assert info.value.field == "n_ubatch"
    assert str(info.value) == "n_ubatch (1024) must not exceed n_batch (512)"


@pytest.mark.parametrize("cache_type", ["q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"])
def test_quantized_v_cache_requires_flash_attention(cache_type: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_with(type_v=cache_type).validate(logical_cores=MANY_CORES)
    assert info.value.field == "type_v"
    assert "type_v" in str(info.value) and "flash_attn" in str(info.value)
    assert load_with(type_v=cache_type, flash_attn=True).validate(logical_cores=MANY_CORES) == []


@pytest.mark.parametrize("cache_type", ["f32", "f16", "bf16"])
def test_unquantized_v_cache_needs_no_flash_attention(cache_type: str) -> None:
    assert load_with(type_v=cache_type).validate(logical_cores=MANY_CORES) == []


def test_quantized_k_cache_alone_is_allowed() -> None:
    assert load_with(type_k="q8_0").validate(logical_cores=MANY_CORES) == []


def test_problems_reports_every_error() -> None:
    load = load_with(n_ctx=0, n_threads=0, n_batch=256, n_ubatch=512, type_v="q4_0", seed=-7)
    fields = [p.field for p in errors(load.problems(logical_cores=MANY_CORES))]
    assert fields == ["n_ctx", "n_threads", "seed", "n_ubatch", "type_v"]
    with pytest.raises(SettingsError) as info:
        load.validate(logical_cores=MANY_CORES)
    assert info.value.field == "n_ctx"  # the first error


def test_wrong_type_skips_cross_field_checks() -> None:
    # n_batch is not a number, so comparing it to n_ubatch must not crash or add noise
    load = load_with(n_batch="big")
    assert [p.field for p in load.problems(logical_cores=MANY_CORES)] == ["n_batch"]


# ---------------------------------------------------------------- validation warnings


def test_n_ctx_above_training_context_warns() -> None:
    load = load_with(n_ctx=16384)
    problems = load.problems(make_model(context_length=8192), logical_cores=MANY_CORES)
    assert errors(problems) == []
    assert warnings_of(problems) == [
        Problem(
            "n_ctx",
            "n_ctx 16384 is above the model's training context 8192: quality will degrade past it",
            "warning",
        )
    ]
    # validate() does not raise for a warning; it returns it
    assert load.validate(make_model(context_length=8192), logical_cores=MANY_CORES) == warnings_of(problems)


def test_n_ctx_within_training_context_or_unknown_does_not_warn() -> None:
    assert load_with(n_ctx=8192).problems(make_model(context_length=8192), logical_cores=MANY_CORES) == []
    assert load_with(n_ctx=16384).problems(make_model(context_length=None), logical_cores=MANY_CORES) == []
    assert load_with(n_ctx=16384).problems(None, logical_cores=MANY_CORES) == []


def test_threads_above_logical_cores_warn() -> None:
    problems = LoadSettings(n_threads=12, n_threads_batch=16).problems(logical_cores=8)
    assert errors(problems) == []
    assert [p.field for p in warnings_of(problems)] == ["n_threads", "n_threads_batch"]
    assert "n_threads 12 is above the 8 logical cores" in problems[0].message


def test_seed_zero_warns_because_llama_cpp_python_treats_it_as_random() -> None:
    problems = load_with(seed=0).problems(logical_cores=MANY_CORES)
    assert [(p.field, p.severity) for p in problems] == [("seed", "warning")]


def test_n_batch_above_n_ctx_warns() -> None:
    problems = load_with(n_ctx=256, n_batch=512, n_ubatch=256).problems(logical_cores=MANY_CORES)
    assert [(p.field, p.severity) for p in problems] == [("n_batch", "warning")]


# ---------------------------------------------------------------- sampling validation


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"top_p": 1.5}, "top_p", "top_p must be between 0 and 1 (got 1.5)"),
        ({"top_p": -0.1}, "top_p", "between 0 and 1"),
        ({"temperature": 5.5}, "temperature", "between 0 and 5"),
        ({"temperature": -1.0}, "temperature", "between 0 and 5"),
        ({"top_k": -1}, "top_k", "between 0 and"),
        ({"min_p": 2.0}, "min_p", "between 0 and 1"),
        ({"repeat_penalty": 0.0}, "repeat_penalty", "greater than 0 and at most 5"),
        ({"repeat_penalty": 5.1}, "repeat_penalty", "greater than 0 and at most 5"),
        ({"presence_penalty": 2.5}, "presence_penalty", "between -2 and 2"),
        ({"frequency_penalty": -2.5}, "frequency_penalty", "between -2 and 2"),
        ({"mirostat_mode": 3}, "mirostat_mode", "one of 0, 1, 2"),
        ({"mirostat_tau": 21.0}, "mirostat_tau", "between 0 and 20"),
        ({"mirostat_eta": 1.5}, "mirostat_eta", "between 0 and 1"),
        ({"max_tokens": 0}, "max_tokens", "between 1 and 1048576"),
        ({"temperature": math.nan}, "temperature", "between 0 and 5"),
        ({"temperature": "hot"}, "temperature", "must be a number between 0 and 5"),
        ({"stop": ["a"]}, "stop", "list of strings"),
    ],
)
def test_sampling_errors_name_field_and_range(changes: dict[str, Any], field: str, fragment: str) -> None:
    sampling = dataclasses.replace(SamplingSettings(), **changes)
    problems = errors(sampling.problems())
    assert [p.field for p in problems] == [field]
    assert fragment in problems[0].message
    with pytest.raises(SettingsError) as info:
        sampling.validate()
    assert info.value.field == field


def test_empty_stop_string_is_an_error() -> None:
    with pytest.raises(SettingsError) as info:
        SamplingSettings(stop=("###", "")).validate()
    assert info.value.field == "stop"
    assert str(info.value) == "stop[1] must not be an empty string"


def test_sampling_boundaries_are_allowed() -> None:
    edge = SamplingSettings(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=5.0, max_tokens=1)
    assert edge.validate() == []


def test_mirostat_warns_that_it_replaces_truncation_samplers() -> None:
    problems = SamplingSettings(mirostat_mode=2).problems()
    assert [(p.field, p.severity) for p in problems] == [("mirostat_mode", "warning")]


def test_max_tokens_above_n_ctx_warns() -> None:
    problems = SamplingSettings(max_tokens=8192).problems(LoadSettings(n_ctx=4096))
    assert [(p.field, p.severity) for p in problems] == [("max_tokens", "warning")]


# ---------------------------------------------------------------- field specs


def test_every_field_has_a_spec_with_label_and_help() -> None:
    assert set(FIELD_SPECS) == set(LOAD_FIELDS) | set(SAMPLING_FIELDS)
    for name, spec in FIELD_SPECS.items():
        assert spec.name == name
        assert spec.label and spec.help


def test_numeric_specs_have_finite_ranges_containing_the_defaults() -> None:
    defaults = {**LoadSettings().to_dict(), **SamplingSettings().to_dict()}
    for name, spec in FIELD_SPECS.items():
        if spec.kind in ("int", "float"):
            assert spec.minimum is not None and spec.maximum is not None, name
            assert math.isfinite(spec.minimum) and math.isfinite(spec.maximum), name
            assert spec.minimum < spec.maximum, name
        value = defaults[name]
        assert spec.check(tuple(value) if isinstance(value, list) else value) is None, name


def test_choice_specs() -> None:
    assert FIELD_SPECS["type_k"].choices == CACHE_TYPES
    assert FIELD_SPECS["type_v"].choices == CACHE_TYPES
    assert set(CACHE_TYPES) == {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"}
    assert FIELD_SPECS["mirostat_mode"].choices == (0, 1, 2)
    assert len(FIELD_SPECS["mirostat_mode"].choice_labels) == 3


def test_validation_reads_ranges_from_field_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    narrowed = dataclasses.replace(FIELD_SPECS["n_ctx"], maximum=2048)
    monkeypatch.setitem(FIELD_SPECS, "n_ctx", narrowed)
    with pytest.raises(SettingsError, match=r"n_ctx must be between 1 and 2048 \(got 4096\)"):
        load_with(n_ctx=4096).validate(logical_cores=MANY_CORES)


def test_field_spec_range_text() -> None:
    assert FieldSpec("x", "X", "help", 0, 10).range_text() == "between 0 and 10"
    assert FieldSpec("x", "X", "help", 0.0, 5.0, kind="float", minimum_exclusive=True).range_text() == (
        "greater than 0 and at most 5"
    )


# ---------------------------------------------------------------- llama-cpp-python mapping


def test_load_to_llama_kwargs() -> None:
    load = LoadSettings(
        n_ctx=2048,
        n_threads=4,
        n_threads_batch=8,
        n_batch=256,
        n_ubatch=128,
        n_gpu_layers=-1,
        use_mmap=False,
        use_mlock=True,
        numa=True,
        flash_attn=True,
        type_k="q8_0",
        type_v="q4_0",
        offload_kqv=False,
        seed=42,
    )
    assert load.to_llama_kwargs() == {
        "n_ctx": 2048,
        "n_threads": 4,
        "n_threads_batch": 8,
        "n_batch": 256,
        "n_ubatch": 128,
        "n_gpu_layers": -1,
        "use_mmap": False,
        "use_mlock": True,
        "numa": True,
        "flash_attn": True,
        "offload_kqv": False,
        "seed": 42,
        "type_k": 8,
        "type_v": 2,
    }


def test_random_seed_maps_to_llama_default_seed() -> None:
    assert load_with(seed=-1).to_llama_kwargs()["seed"] == 0xFFFFFFFF
    assert load_with(seed=0).to_llama_kwargs()["seed"] == 0


@pytest.mark.parametrize(
    ("name", "ggml_type"),
    [
        ("f32", 0),
        ("f16", 1),
        ("q4_0", 2),
        ("q4_1", 3),
        ("q5_0", 6),
        ("q5_1", 7),
        ("q8_0", 8),
        ("iq4_nl", 20),
        ("bf16", 30),
    ],
)
def test_cache_types_map_to_ggml_type_ids(name: str, ggml_type: int) -> None:
    kwargs = load_with(type_k=name, type_v=name, flash_attn=True).to_llama_kwargs()
    assert kwargs["type_k"] == ggml_type and kwargs["type_v"] == ggml_type


def test_sampling_to_llama_kwargs() -> None:
    sampling = SamplingSettings(stop=("</s>", "\n\n"), max_tokens=64, top_k=0)
    assert sampling.to_llama_kwargs() == {
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": 0,
        "min_p": 0.05,
        "typical_p": 1.0,
        "repeat_penalty": 1.1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "mirostat_mode": 0,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
        "max_tokens": 64,
        "stop": ["</s>", "\n\n"],
    }


# ---------------------------------------------------------------- dict round trips


def test_dict_round_trip() -> None:
    load = load_with(n_ctx=8192, type_k="q8_0", flash_attn=True, seed=7)
    sampling = SamplingSettings(temperature=0.2, stop=("a", "b"))
    assert LoadSettings.from_dict(load.to_dict()) == load
    assert SamplingSettings.from_dict(sampling.to_dict()) == sampling
    assert sampling.to_dict()["stop"] == ["a", "b"]  # lists, for TOML and JSON


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert SamplingSettings.from_dict({"temperature": 0.5}) == SamplingSettings(temperature=0.5)


def test_from_dict_ignores_and_reports_unknown_keys() -> None:
    data = {"n_ctx": 1024, "rope_freq_base": 10000.0, "colour": "blue"}
    with pytest.warns(UnknownSettingsWarning, match="colour, rope_freq_base"):
        load = LoadSettings.from_dict(data)
    assert load.n_ctx == 1024
    assert LoadSettings.unknown_keys(data) == ["rope_freq_base", "colour"]


def test_from_dict_coerces_lenient_values() -> None:
    sampling = SamplingSettings.from_dict({"temperature": 1, "stop": ["x"]})
    assert sampling.temperature == 1.0 and isinstance(sampling.temperature, float)
    assert sampling.stop == ("x",)
    assert LoadSettings.from_dict({"type_k": "Q8_0"}).type_k == "q8_0"


@pytest.mark.parametrize(
    ("cls", "data", "field"),
    [
        (LoadSettings, {"n_ctx": "big"}, "n_ctx"),
        (LoadSettings, {"n_ctx": 4096.5}, "n_ctx"),
        (LoadSettings, {"use_mmap": "yes"}, "use_mmap"),
        (LoadSettings, {"n_gpu_layers": True}, "n_gpu_layers"),
        (LoadSettings, {"type_v": 8}, "type_v"),
        (SamplingSettings, {"top_p": "high"}, "top_p"),
        (SamplingSettings, {"stop": "###"}, "stop"),
        (SamplingSettings, {"stop": ["ok", 3]}, "stop"),
        (SamplingSettings, {"mirostat_mode": "1"}, "mirostat_mode"),
    ],
)
def test_from_dict_wrong_type_names_the_field(cls: type, data: dict[str, Any], field: str) -> None:
    with pytest.raises(SettingsError) as info:
        cls.from_dict(data)
    assert info.value.field == field
    assert field in str(info.value)


def test_from_dict_leaves_range_errors_to_validate() -> None:
    load = LoadSettings.from_dict({"n_ctx": 0, "type_k": "q2_k"})
    assert [p.field for p in errors(load.problems(logical_cores=MANY_CORES))] == ["n_ctx", "type_k"]


# ---------------------------------------------------------------- reload


def test_every_load_field_needs_a_reload() -> None:
    assert RELOAD_FIELDS == frozenset(LOAD_FIELDS)


def test_needs_reload_lists_changed_fields_in_order() -> None:
    old = load_with()
    assert needs_reload(old, old) == []
    assert needs_reload(old, dataclasses.replace(old)) == []
    new = dataclasses.replace(old, seed=5, n_ctx=8192, flash_attn=True)
    assert needs_reload(old, new) == ["n_ctx", "flash_attn", "seed"]


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize(
    ("n_params", "size_class"),
    [
        (135_000_000, SizeClass.TINY),
        (1_700_000_000, SizeClass.SMALL),
        (3_800_000_000, SizeClass.MEDIUM),
        (8_000_000_000, SizeClass.LARGE),
    ],
)
def test_size_class_from_n_params(n_params: int, size_class: SizeClass) -> None:
    assert make_model(n_params=n_params).size_class is size_class


@pytest.mark.parametrize(
    ("size_class", "n_ctx", "n_batch"),
    [
        (SizeClass.TINY, 4096, 512),
        (SizeClass.SMALL, 4096, 512),
        (SizeClass.MEDIUM, 4096, 512),
        (SizeClass.LARGE, 2048, 256),
    ],
)
def test_presets_by_size_class(size_class: SizeClass, n_ctx: int, n_batch: int) -> None:
    load, sampling = preset_for(size_class, logical_cores=16, physical_cores=8)
    assert (load.n_ctx, load.n_batch) == (n_ctx, n_batch)
    assert load.n_ubatch <= load.n_batch
    assert (load.n_threads, load.n_threads_batch) == (8, 16)
    assert load.use_mlock is False
    assert sampling == SamplingSettings()
    assert load.validate(logical_cores=16) == []


def test_preset_threads_default_to_machine_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "count_physical_cores", lambda: 6)
    monkeypatch.setattr(settings_module, "count_logical_cores", lambda: 12)
    load, _ = preset_for(SizeClass.SMALL)
    assert (load.n_threads, load.n_threads_batch) == (6, 12)


def test_preset_for_model_uses_the_size_class() -> None:
    load, _ = preset_for_model(make_model(n_params=8_000_000_000, context_length=131072), physical_cores=4)
    assert (load.n_ctx, load.n_batch) == (2048, 256)


def test_preset_for_model_clamps_to_training_context() -> None:
    model = make_model(context_length=2048)
    load, _ = preset_for_model(model, logical_cores=8, physical_cores=4)
    assert load.n_ctx == 2048
    assert load.validate(model, logical_cores=8) == []


def test_preset_for_model_clamps_batches_for_a_tiny_context() -> None:
    model = make_model(context_length=256)
    load, _ = preset_for_model(model, logical_cores=8, physical_cores=4)
    assert (load.n_ctx, load.n_batch, load.n_ubatch) == (256, 256, 256)
    assert load.validate(model, logical_cores=8) == []


def test_preset_for_model_without_context_length_keeps_preset() -> None:
    load, _ = preset_for_model(make_model(context_length=None), logical_cores=8, physical_cores=4)
    assert load.n_ctx == 4096
