"""Recipes: YAML files mapped onto dataclasses, with ``--set key=value`` overrides and strict checking.

Every problem (missing file, bad YAML, unknown key, wrong type) becomes a ``ForesightError`` naming the key
and what to do, which the CLI prints as one line.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml

from foresight.errors import ForesightError

CONFIG_DIR_ENV = "FORESIGHT_CONFIGS"


def recipe_dirs() -> list[Path]:
    """Where recipe names are looked up: $FORESIGHT_CONFIGS, ./configs, the source checkout's configs/, then the
    recipes an installed wheel carries (the same files, shipped as package data by setup.py)."""
    dirs = [Path(p) for p in os.environ.get(CONFIG_DIR_ENV, "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "configs")
    here = Path(__file__).resolve()
    dirs.append(here.parents[2] / "configs")  # src/foresight/config.py -> repo/configs
    dirs.append(here.parent / "configs")  # site-packages/foresight/configs
    return dirs


def find_recipe(name: str, group: str = "") -> Path:
    """A path to a YAML file, or a recipe name such as ``smoke`` (looked up as configs/<group>/<name>.yaml)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ForesightError(f"recipe file not found: {name}")
        return path
    for d in recipe_dirs():
        candidate = d / group / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    # Recipes in sub-folders are named by their relative path (text/tiny) when no group is implied.
    known = sorted({p.relative_to(d / group).with_suffix("").as_posix() for d in recipe_dirs() if (d / group).is_dir()
                    for p in ((d / group).glob("*.yaml") if group else (d / group).rglob("*.yaml"))})
    raise ForesightError(f"unknown recipe {name!r}; give a .yaml path or one of: {', '.join(known) or '(none found)'}")


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few kB; anything near a MB is not one
MAX_YAML_DEPTH = 32  # nesting of mappings and lists (recipes use 4-5)


class YAMLLimit(yaml.YAMLError):
    """YAML that foresight refuses although it parses: an alias, or nesting past ``MAX_YAML_DEPTH``."""


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases and with bounded nesting. An alias (``*name``) re-uses a node, so a
    kilobyte of nested aliases ("billion laughs") expands to gigabytes once the document is walked (and written
    back into results and checkpoints); recipes never need one, so the first is refused where it stands."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YAMLLimit(f"line {event.start_mark.line + 1}: aliases (*{event.anchor}) are not allowed; write the "
                            f"value out in full")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise YAMLLimit(f"line {mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def safe_yaml(text: str):
    """``yaml.safe_load`` with foresight's limits (no aliases, bounded depth); ``yaml.YAMLError`` (``YAMLLimit``
    for a refused construct) if the text is not acceptable YAML."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise ForesightError(f"recipe {path} is larger than {MAX_RECIPE_BYTES:,} bytes; recipes are a few kB "
                                 f"of YAML (is this the right file?)")
        data = safe_yaml(raw.decode("utf-8"))
    except OSError as e:
        raise ForesightError(f"cannot read recipe {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ForesightError(f"recipe {path} is not UTF-8 text (a binary file?); give a .yaml recipe") from None
    except YAMLLimit as e:
        raise ForesightError(f"recipe {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ForesightError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ForesightError(f"recipe {path} must be a mapping of sections (model:, train:, ...)")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``3``, ``1e-3``, ``[a, b]``, ``true``)."""
    for item in overrides:
        if "=" not in item:
            raise ForesightError(f"--set expects key=value (for example train.steps=100), got {item!r}")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ForesightError(f"--set {item!r}: empty key")
        try:
            value = safe_yaml(raw)
        except YAMLLimit as e:
            raise ForesightError(f"--set {key}: {e}") from None
        except yaml.YAMLError:
            raise ForesightError(f"--set {key}: cannot parse value {raw!r}") from None
        node = data
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ForesightError(f"--set {key}: {p!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotation ``tp`` (int, float, bool, str, list, unions, None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        for opt in options:
            try:
                return _coerce(value, opt, where)
            except ForesightError:
                continue
        names = " or ".join(_type_name(typing.get_origin(o) or o) for o in options)
        raise ForesightError(f"{where} must be {names}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ForesightError(f"{where} must be {_type_name(origin or tp)}, got {value!r}")


def from_dict(cls, data: dict | None, where: str):
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors naming ``where.key``."""
    data = data or {}
    if not isinstance(data, dict):
        raise ForesightError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ForesightError(f"unknown key {where}.{key}; known keys: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
