"""Pretrained references: what a ``pretrained:`` value may be, and what ``from_pretrained`` gets.

A reference is a hub id (passed through untouched), a local path, ``pkg:<package>[/sub]`` (weights
shipped inside an installed Python package, found without importing it: some such packages import
CLI tools at import time), or ``tiny``/``small`` (a stand-in of the right family, built and saved
locally on first use, see ``tiny.py``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from bridgebench.errors import ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_LOCAL_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".gguf", ".json")


def looks_local(value: str) -> bool:
    """True when a checkpoint string can only mean a local path (not a hub id)."""
    return (
        value.startswith(("/", "./", "../", "~"))
        or value.endswith(_LOCAL_SUFFIXES)
        or not _HUB_ID.match(value)
    )


def is_hub_id(value: str) -> bool:
    """A reference that ``from_pretrained`` would look up on the Hugging Face hub."""
    return (value not in ("tiny", "small") and not value.startswith("pkg:")
            and not os.path.exists(os.path.expanduser(value)) and not looks_local(value))


def resolve_package_path(value: str, key: str = "checkpoint") -> str:
    """``pkg:name[/sub/dir]`` -> the folder of installed package ``name`` (plus ``sub/dir``)."""
    ref = value[len("pkg:"):]
    name, _, sub = ref.partition("/")
    spec = importlib.util.find_spec(name) if name else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{key}: Python package '{name}' is not installed (pip install it, or use a hub id)")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise ConfigError(f"{key}: '{path}' does not exist inside package '{name}'")
    return str(path)


def pretrained_problem(key: str, value: str) -> str | None:
    """What is wrong with a pretrained reference (None if it may be used): ``tiny``/``small``,
    ``pkg:<package>[/sub]``, an existing path, or something that can only be a hub id."""
    if not value:
        return f"{key}: empty checkpoint reference; give a hub id, a local path or 'tiny'"
    if value in ("tiny", "small"):
        return None
    if value.startswith("pkg:"):
        try:
            resolve_package_path(value, key)
        except ConfigError as err:
            return str(err)
        return None
    if os.path.exists(os.path.expanduser(value)):
        return None
    if looks_local(value):
        return f"{key}: checkpoint path '{value}' does not exist; fix the path or use a hub id"
    return None


def resolve_pretrained(value: str, key: str, family: str | None = None, build: bool = True) -> str:
    """Turn a pretrained reference into a hub id or a local path."""
    if value in ("tiny", "small"):
        if family is None or not build:
            return value
        from bridgebench.runtime.tiny import FAMILIES, tiny_checkpoint

        name = family if value == "tiny" else f"{family}-small"
        if name not in FAMILIES:
            raise ConfigError(f"{key}: no '{value}' stand-in for {family}; use a checkpoint or 'tiny'")
        return str(tiny_checkpoint(name))
    if value.startswith("pkg:"):
        return resolve_package_path(value, key)
    return os.path.expanduser(value)


def hub_error(key: str, value: str, err: BaseException) -> ConfigError:
    """One line for a hub id that could not be loaded (no network, unknown id, gated repo)."""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError(f"{key}: cannot load '{value}' from the Hugging Face hub ({detail[:160]}); it needs "
                       "network access (or a warm hub cache), or give a local path")
