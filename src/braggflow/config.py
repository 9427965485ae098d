"""Config validation against config/config.schema.yaml with messages that name the key and what is allowed.

Snakemake's ``validate`` (run in the Snakefile too) sets defaults; this module gives the readable errors
and lets library code and tests load a config without Snakemake.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """One or more config keys are wrong; the message lists each key with what is allowed."""


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _allowed(schema: dict[str, Any]) -> str:
    bits = []
    if "description" in schema:
        bits.append(schema["description"].strip().rstrip("."))
    if "type" in schema:
        t = schema["type"]
        bits.append("type " + (" or ".join(t) if isinstance(t, list) else t))
    if "enum" in schema:
        bits.append("one of " + ", ".join(repr(v) for v in schema["enum"]))
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in schema:
            bits.append(f"{word} {schema[key]}")
    if "minItems" in schema:
        bits.append(f"at least {schema['minItems']} item(s)")
    if "pattern" in schema:
        bits.append(f"matching {schema['pattern']!r}")
    return "; ".join(bits)


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        where = "" if key == "<top level>" else key + "."
        return "; ".join(f"config key '{where}{e}' is not known (allowed keys here: {known})" for e in extra)
    if error.validator == "required":
        return f"config key '{key}': {error.message} (see config/README.md)"
    hint = ""
    if error.validator == "type" and isinstance(error.instance, str):
        try:
            float(error.instance)
            hint = f"; YAML reads {error.instance} as text: write it with a sign in the exponent, e.g. 1.0e+12"
        except ValueError:
            pass
    return f"config key '{key}': {error.message} (allowed: {_allowed(error.schema)}){hint}"


def check_config(config: dict[str, Any], schema: dict[str, Any] | str | Path) -> None:
    """Raise ConfigError naming every wrong key; return None when the config is valid."""
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = "\n  ".join(_describe(e) for e in errors)
        raise ConfigError(f"invalid configuration:\n  {lines}")


def _fill_defaults(config: Any, schema: dict[str, Any]) -> None:
    if not isinstance(config, dict):
        return
    for branch in schema.get("anyOf", ()):  # "null or a mapping": the mapping's defaults where one is given
        if branch.get("type") == "object":
            _fill_defaults(config, branch)
    for key, sub in schema.get("properties", {}).items():
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        if key in config:
            _fill_defaults(config[key], sub)


def section_defaults(schema: dict[str, Any] | str | Path, section: str, **overrides: Any) -> dict[str, Any]:
    """A config section as the schema fills it in when the config leaves it empty, with ``overrides`` merged in
    one level deep (for tests and benchmarks that build settings without a config file)."""
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    cfg = copy.deepcopy(overrides)
    _fill_defaults(cfg, schema["properties"][section])
    return cfg


def load_schema(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable config file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(config).__name__}")
    return config


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Snakemake's update_config: mappings merge key by key, anything else replaces."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def workflow_config(configfiles: list[str | Path], root: str | Path, replace: bool = False) -> dict[str, Any]:
    """The config a run of ``snakemake [--replace-workflow-config] --configfile <configfiles>`` sees: the files
    merged over ``root``/config/config.yaml (or instead of it with ``replace``), checked, defaults filled."""
    root = Path(root)
    config = {} if replace and configfiles else _read_mapping(root / "config/config.yaml")
    for path in configfiles:
        _merge(config, _read_mapping(Path(path)))
    schema = load_schema(root / "config/config.schema.yaml")
    check_config(config, schema)
    _fill_defaults(config, schema)
    return config


def load_config(path: str | Path, schema_path: str | Path) -> dict[str, Any]:
    """Read a config YAML, check it (ConfigError naming the key) and fill the schema's defaults."""
    config = _read_mapping(Path(path))
    schema = load_schema(schema_path)
    check_config(config, schema)
    _fill_defaults(config, schema)
    return config


def check_structure_files(config: dict[str, Any], base: str | Path = ".") -> None:
    """Every structure named in the config must have a readable file (relative paths from ``base``)."""
    missing = []
    for name, entry in config["structures"].items():
        path = Path(base) / entry["file"]
        if not path.is_file():
            missing.append(f"config key 'structures.{name}.file': no such file {entry['file']!r}")
    if missing:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(missing))


def check_phase_sets(config: dict[str, Any]) -> None:
    """What the schema cannot say of phases.sets: unseen crystals are among the set's, at least one is seen, the
    splits leave training samples, each CIF exists, and the density grid holds the hkl grid."""
    from .errors import InputError
    from .phases.dataset import resolve_cif

    problems = []
    phases = config.get("phases", {})
    grid = phases.get("evaluation", {}).get("map_grid", 24)
    for name, s in phases.get("sets", {}).items():
        key = f"phases.sets.{name}"
        cifs = s["cifs"]
        if len(set(cifs)) != len(cifs):
            problems.append(f"config key '{key}.cifs': a CIF is listed twice")
        for u in s.get("unseen", []):
            if u not in cifs:
                problems.append(f"config key '{key}.unseen': {u!r} is not among {key}.cifs")
        if not set(cifs) - set(s.get("unseen", [])):
            problems.append(f"config key '{key}.unseen': every crystal is held out; none is left to train on")
        if s.get("validation_fraction", 0.1) + s.get("test_fraction", 0.1) >= 1.0:
            problems.append(f"config key '{key}': validation_fraction + test_fraction must be below 1")
        if grid < 2 * max(s.get("grid_half_width", [4, 4, 4])) + 1:
            problems.append(f"config key 'phases.evaluation.map_grid': {grid} is below 2 max({key}.grid_half_width)"
                            " + 1 (the maps would fold reflections onto each other)")
        for c in cifs:
            try:
                path = resolve_cif(c)
            except InputError as exc:
                problems.append(f"config key '{key}.cifs': {exc}")
                continue
            if not path.is_file():
                problems.append(f"config key '{key}.cifs': no such file {c!r}")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
