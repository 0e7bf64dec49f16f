"""Named TOML profiles: round trip, atomic writes, corrupt files, names and listing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from app.model import profiles as profiles_module
from app.model.profiles import MAX_NAME_CHARS, ProfileError, ProfileStore, slugify
from app.model.settings import LoadSettings, SamplingSettings, SettingsError, UnknownSettingsWarning

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def sample_settings() -> tuple[LoadSettings, SamplingSettings]:
    load = LoadSettings(
        n_ctx=8192,
        n_threads=4,
        n_threads_batch=8,
        n_batch=256,
        n_ubatch=128,
        n_gpu_layers=-1,
        flash_attn=True,
        type_k="q8_0",
        type_v="q8_0",
        seed=1234,
    )
    sampling = SamplingSettings(temperature=0.3, top_k=0, stop=("###", "\n\nUser:"), max_tokens=512)
    return load, sampling


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    return ProfileStore(tmp_path / "profiles")


def test_round_trip(store: ProfileStore) -> None:
    load, sampling = sample_settings()
    path = store.save("Long context", load, sampling)
    assert path == store.root / "long-context.toml"
    assert path.is_file()
    assert store.load("Long context") == (load, sampling)


def test_file_stores_the_real_name_and_both_tables(store: ProfileStore) -> None:
    path = store.save("Café Böse #1", *sample_settings())
    assert path.name == "cafe-bose-1.toml"
    with path.open("rb") as fh:
        document = tomllib.load(fh)
    assert document["name"] == "Café Böse #1"
    assert document["load"]["n_ctx"] == 8192
    assert document["sampling"]["stop"] == ["###", "\n\nUser:"]
    assert store.list() == ["Café Böse #1"]


def test_save_overwrites_the_same_profile(store: ProfileStore) -> None:
    load, sampling = sample_settings()
    store.save("fast", load, sampling)
    store.save("fast", load, SamplingSettings(temperature=0.0))
    assert store.load("fast")[1] == SamplingSettings(temperature=0.0)
    assert store.list() == ["fast"]


def test_list_and_delete(store: ProfileStore) -> None:
    assert store.list() == []  # the folder does not exist yet
    for name in ("beta", "Alpha", "gamma"):
        store.save(name, *sample_settings())
    assert store.list() == ["Alpha", "beta", "gamma"]
    store.delete("beta")
    assert store.list() == ["Alpha", "gamma"]
    assert not store.exists("beta") and store.exists("Alpha")


def test_delete_and_load_missing_profile_raise(store: ProfileStore) -> None:
    with pytest.raises(ProfileError, match="no profile named 'ghost'") as info:
        store.load("ghost")
    assert info.value.path == store.root / "ghost.toml"
    with pytest.raises(ProfileError, match="no profile named 'ghost'"):
        store.delete("ghost")


def test_write_is_atomic_via_temp_file_and_replace(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    load, sampling = sample_settings()
    store.save("p", load, sampling)
    before = (store.root / "p.toml").read_bytes()
    calls: list[tuple[Path, Path]] = []

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append((Path(src), Path(dst)))
        assert Path(src).parent == store.root  # same folder, so the rename is atomic
        assert Path(src).read_bytes() != before  # the new content was fully written first
        raise OSError("disk on fire")

    monkeypatch.setattr(profiles_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        store.save("p", load, SamplingSettings(temperature=1.5))
    assert calls and calls[0][1] == store.root / "p.toml"
    assert (store.root / "p.toml").read_bytes() == before  # the old profile is intact
    assert sorted(p.name for p in store.root.iterdir()) == ["p.toml"]  # no temp file left behind


def test_corrupt_file_raises_profile_error_with_path(store: ProfileStore) -> None:
    store.save("good", *sample_settings())
    bad = store.root / "bad.toml"
    bad.write_text('name = "bad"\n[load\nn_ctx = 4096\n', encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        store.load("bad")
    assert info.value.path == bad
    assert str(bad) in str(info.value) and "not valid TOML" in str(info.value)
    assert store.list() == ["good"]  # the others are still listed
    broken = store.broken()
    assert [e.path for e in broken] == [bad]


def test_non_utf8_file_is_a_profile_error(store: ProfileStore) -> None:
    store.root.mkdir(parents=True)
    (store.root / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProfileError, match="not valid TOML"):
        store.load("binary")


def test_wrong_type_in_file_names_field_and_path(store: ProfileStore) -> None:
    store.root.mkdir(parents=True)
    path = store.root / "typo.toml"
    path.write_text('name = "typo"\n[load]\nn_ctx = "large"\n', encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        store.load("typo")
    assert "n_ctx" in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value.__cause__, SettingsError)


def test_out_of_range_value_in_file_is_a_profile_error(store: ProfileStore) -> None:
    store.root.mkdir(parents=True)
    (store.root / "zero.toml").write_text('name = "zero"\n[load]\nn_ctx = 0\n', encoding="utf-8")
    with pytest.raises(ProfileError, match=r"n_ctx must be between 1 and 1048576 \(got 0\)"):
        store.load("zero")


def test_section_that_is_not_a_table_is_a_profile_error(store: ProfileStore) -> None:
    store.root.mkdir(parents=True)
    (store.root / "flat.toml").write_text('name = "flat"\nload = 3\n', encoding="utf-8")
    with pytest.raises(ProfileError, match=r"\[load\] must be a table"):
        store.load("flat")


def test_unknown_keys_are_tolerated_and_reported(store: ProfileStore) -> None:
    store.root.mkdir(parents=True)
    (store.root / "future.toml").write_text(
        'name = "future"\nformat = 2\nwidget = true\n'
        "[load]\nn_ctx = 2048\nn_threads = 2\nn_threads_batch = 2\nswa_full = true\n"
        "[sampling]\ntemperature = 1\nxtc_probability = 0.5\n",
        encoding="utf-8",
    )
    assert store.list() == ["future"]
    with pytest.warns(UnknownSettingsWarning, match="load.swa_full, sampling.xtc_probability"):
        load, sampling = store.load("future")
    assert load.n_ctx == 2048
    assert sampling.temperature == 1.0


def test_missing_tables_take_defaults(store: ProfileStore) -> None:
    store.root.mkdir(parents=True)
    (store.root / "minimal.toml").write_text('name = "Minimal"\n', encoding="utf-8")
    load, sampling = store.load("minimal")
    assert load.n_ctx == LoadSettings().n_ctx
    assert sampling == SamplingSettings()
    assert store.list() == ["Minimal"]


@pytest.mark.parametrize("name", ["", "   ", "x" * (MAX_NAME_CHARS + 1), "tab\there"])
def test_invalid_names_are_refused(store: ProfileStore, name: str) -> None:
    with pytest.raises(ProfileError, match="profile name"):
        store.save(name, *sample_settings())


def test_longest_name_is_allowed(store: ProfileStore) -> None:
    name = "n" * MAX_NAME_CHARS
    store.save(name, *sample_settings())
    assert store.list() == [name]


def test_names_differing_only_in_slug_do_not_overwrite_each_other(store: ProfileStore) -> None:
    store.save("My Profile", *sample_settings())
    with pytest.raises(ProfileError, match="clashes with existing profile 'My Profile'"):
        store.save("my-profile", *sample_settings())
    assert store.list() == ["My Profile"]


def test_invalid_settings_are_not_saved(store: ProfileStore) -> None:
    with pytest.raises(SettingsError):
        store.save("broken", LoadSettings(n_ctx=0), SamplingSettings())
    assert store.list() == []


def test_slugify() -> None:
    assert slugify("Long Context (32k)") == "long-context-32k"
    assert slugify("  --a__b--  ") == "a-b"
    cjk = slugify("日本語")
    assert cjk.startswith("profile-") and cjk == slugify("日本語") and cjk != slugify("中文")


def test_default_root_is_the_user_config_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import platformdirs

    seen: list[tuple[str, object]] = []

    def fake_user_config_dir(appname: str, appauthor: object = None, **_kw: object) -> str:
        seen.append((appname, appauthor))
        return str(tmp_path / "config")

    monkeypatch.setattr(platformdirs, "user_config_dir", fake_user_config_dir)
    store = ProfileStore()
    assert store.root == tmp_path / "config" / "profiles"
    assert seen == [("LlamaScope", False)]
