"""Named settings profiles, one TOML file each in the user's config folder.

A file is named after a slug of the profile name; the real name is stored inside it, so names keep
their case, spaces and accents:

    name = "Long context"
    format = 1

    [load]
    n_ctx = 16384
    ...

    [sampling]
    temperature = 0.7
    ...
"""

from __future__ import annotations

import builtins
import hashlib
import os
import re
import sys
import tempfile
import unicodedata
import warnings
from pathlib import Path
from typing import Any

import tomli_w

from app.model.settings import (
    LOAD_FIELDS,
    SAMPLING_FIELDS,
    LoadSettings,
    SamplingSettings,
    SettingsError,
    UnknownSettingsWarning,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

APP_NAME = "LlamaScope"
MAX_NAME_CHARS = 64
FORMAT_VERSION = 1
_SUFFIX = ".toml"


class ProfileError(Exception):
    """A profile that cannot be saved, found or read; `path` is the file involved, if any."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def default_profiles_dir() -> Path:
    """<user config dir>/LlamaScope/profiles, per platformdirs."""
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "profiles"


def validate_name(name: str) -> str:
    """The name stripped of surrounding blanks; ProfileError if empty, too long or with control chars."""
    if not isinstance(name, str):
        raise ProfileError(f"profile name must be text (got {name!r})")
    stripped = name.strip()
    if not stripped:
        raise ProfileError("profile name must not be empty")
    if len(stripped) > MAX_NAME_CHARS:
        raise ProfileError(f"profile name must be at most {MAX_NAME_CHARS} characters (got {len(stripped)})")
    if any(unicodedata.category(c).startswith("C") for c in stripped):
        raise ProfileError(f"profile name must not contain control characters (got {stripped!r})")
    return stripped


def slugify(name: str) -> str:
    """A portable file stem for a profile name: lowercase ASCII letters, digits and dashes."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    if not slug:
        # A name with no ASCII letters or digits (e.g. all CJK) still needs a stable, distinct stem.
        slug = "profile-" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
    return slug


class ProfileStore:
    """Saves, lists, loads and deletes named profiles under `root` (default: the user config dir)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_profiles_dir()

    def path_for(self, name: str) -> Path:
        return self.root / f"{slugify(validate_name(name))}{_SUFFIX}"

    def exists(self, name: str) -> bool:
        return self.path_for(name).is_file()

    def list(self) -> builtins.list[str]:
        """Names of the readable profiles, sorted case-insensitively; unreadable files are skipped
        (see `broken()`)."""
        names = [name for name, _path in self._scan()[0]]
        return sorted(names, key=lambda n: (n.casefold(), n))

    def broken(self) -> builtins.list[ProfileError]:
        """One error per profile file that cannot be read, so the GUI can say which and why."""
        return self._scan()[1]

    def save(self, name: str, load: LoadSettings, sampling: SamplingSettings) -> Path:
        """Write the profile atomically (temp file in the same folder, then os.replace).

        Invalid settings are refused (SettingsError), so every saved profile loads again.
        """
        name = validate_name(name)
        load.validate()
        sampling.validate()
        path = self.path_for(name)
        if path.is_file():
            try:
                existing = self._read(path)[0]
            except ProfileError:
                existing = None  # an unreadable file under this slug is replaced by the good one
            if existing is not None and existing != name:
                raise ProfileError(
                    f"profile name {name!r} clashes with existing profile {existing!r} (same file name)",
                    path=path,
                )
        document = {
            "name": name,
            "format": FORMAT_VERSION,
            "load": load.to_dict(),
            "sampling": sampling.to_dict(),
        }
        data = tomli_w.dumps(document).encode("utf-8")
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())  # the data must be on disk before the rename makes it visible
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def load(self, name: str) -> tuple[LoadSettings, SamplingSettings]:
        """Read a profile; ProfileError (with the path) if missing, corrupt or invalid."""
        path = self.path_for(name)
        if not path.is_file():
            raise ProfileError(f"no profile named {validate_name(name)!r} ({path})", path=path)
        _name, load, sampling, unknown = self._read(path)
        if unknown:
            message = f"{path}: ignoring unknown settings {', '.join(unknown)}"
            warnings.warn(message, UnknownSettingsWarning, stacklevel=2)
        return load, sampling

    def delete(self, name: str) -> None:
        path = self.path_for(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ProfileError(f"no profile named {validate_name(name)!r} ({path})", path=path) from None
        except OSError as exc:
            raise ProfileError(f"cannot delete {path}: {exc.strerror or exc}", path=path) from exc

    def _scan(self) -> tuple[builtins.list[tuple[str, Path]], builtins.list[ProfileError]]:
        found: builtins.list[tuple[str, Path]] = []
        errors: builtins.list[ProfileError] = []
        if not self.root.is_dir():
            return found, errors
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            if path.name.startswith("."):
                continue
            try:
                found.append((self._read(path)[0], path))
            except ProfileError as exc:
                errors.append(exc)
        return found, errors

    @staticmethod
    def _read(path: Path) -> tuple[str, LoadSettings, SamplingSettings, builtins.list[str]]:
        """Name, settings and the unknown keys ("load.foo") of one profile file."""
        try:
            with path.open("rb") as fh:
                document = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{path}: not valid TOML: {exc}", path=path) from exc
        except UnicodeDecodeError as exc:
            raise ProfileError(f"{path}: not valid TOML: {exc}", path=path) from exc
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}", path=path) from exc
        name = document.get("name")
        if not isinstance(name, str) or not name.strip():
            # Tolerate a hand-written file without a name: the file stem stands in for it.
            name = path.stem
        load_data = _table(document, "load", path)
        sampling_data = _table(document, "sampling", path)
        unknown = [f"load.{k}" for k in LoadSettings.unknown_keys(load_data)]
        unknown += [f"sampling.{k}" for k in SamplingSettings.unknown_keys(sampling_data)]
        try:
            # Unknown keys (e.g. from a newer LlamaScope) are dropped here and reported by load().
            load = LoadSettings.from_dict({k: v for k, v in load_data.items() if k in LOAD_FIELDS})
            sampling = SamplingSettings.from_dict(
                {k: v for k, v in sampling_data.items() if k in SAMPLING_FIELDS}
            )
            load.validate()
            sampling.validate()
        except SettingsError as exc:
            raise ProfileError(f"{path}: {exc}", path=path) from exc
        return name.strip(), load, sampling, unknown


def _table(document: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise ProfileError(f"{path}: [{key}] must be a table (got {type(value).__name__})", path=path)
    return value
