"""Where settings come from and how a bad one is reported, named as the user wrote it.

The environment (a list setting may be comma-separated, as `CRYPTOBOTS_MARKETS` is), the
YAML file named by `CRYPTOBOTS_CONFIG` (read here, so a malformed file is one line naming
its line and column), and the error lines that name an environment variable, a YAML key
or a setting, whichever the bad value came from.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource

from pipeline.errors import ConfigurationError
from pipeline.settings.urls import mask_url

_SEQUENCES = (list, tuple, set, frozenset)


class CommaListEnvSource(EnvSettingsSource):
    """Environment variables; a list setting may also be written `a,b` instead of JSON."""

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        """JSON as pydantic-settings reads it, else comma-separated items for a list."""
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            text = str(value).strip()
            if field is None or typing.get_origin(field.annotation) not in _SEQUENCES:
                raise
            if text.startswith(("[", "{")):
                raise
            return [part.strip() for part in text.split(",") if part.strip()]


def read_yaml(path: Path, variable: str) -> dict[str, Any]:
    """The settings in a YAML file: a mapping of keys, or a ConfigurationError naming the
    file, where it is wrong and the fix."""
    import yaml

    if not path.is_file():
        raise ConfigurationError(
            f"{variable}={str(path)!r}: no such file; point it at a YAML settings file or unset it"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigurationError(
            f"settings file {path} ({variable}) is not valid YAML{where}: {problem}; fix the "
            "file (keys as in `python -m pipeline settings`) or unset the variable"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(
            f"settings file {path} ({variable}) cannot be read: {error}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"settings file {path} ({variable}) holds a {type(data).__name__}, not a mapping of "
            "settings: write keys at the top level, e.g. `training:` then `  steps: 1000`"
        )
    return data


def env_key(prefix: str, loc: tuple[int | str, ...]) -> str:
    """A setting as an environment variable: PREFIX_A__B, then [index].field inside lists."""
    first_index = next((i for i, p in enumerate(loc) if isinstance(p, int)), len(loc))
    key = prefix + "__".join(str(p).upper() for p in loc[:first_index])
    return key + _path(loc[first_index:])


def describe(
    error: Mapping[str, Any],
    *,
    prefix: str,
    environ: Mapping[str, str],
    yaml_file: Path | None = None,
    yaml_data: Mapping[str, Any] | None = None,
) -> str:
    """One bad value, named where the user wrote it: its YAML key when it came from the
    file, else the environment variable that sets it."""
    loc = tuple(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc:
        return f"invalid settings: {message}"
    value = error.get("input")
    if isinstance(value, str) and "url" in str(loc).lower():
        value = mask_url(value)
    shown = "" if isinstance(value, Mapping) else f"={value!r}"
    if yaml_data is not None and not _in_env(prefix, loc, environ) and _in_yaml(loc, yaml_data):
        dotted = ".".join(_names(loc)) + _path(loc[len(_names(loc)) :])
        return f"invalid setting {dotted}{shown} in {yaml_file}: {message}"
    return f"invalid setting {env_key(prefix, loc)}{shown}: {message}"


def _names(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    first_index = next((i for i, p in enumerate(loc) if isinstance(p, int)), len(loc))
    return tuple(str(p) for p in loc[:first_index])


def _path(rest: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)


def _in_env(prefix: str, loc: tuple[int | str, ...], environ: Mapping[str, str]) -> bool:
    names = _names(loc)
    keys = {key.upper() for key in environ}
    return any((prefix + "__".join(names[:n])).upper() in keys for n in range(1, len(names) + 1))


def _in_yaml(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> bool:
    return bool(_names(loc)) and _names(loc)[0] in data
