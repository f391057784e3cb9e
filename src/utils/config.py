"""YAML configuration with ``__BASE__`` inheritance and ``--key=value`` overrides.

Precedence is CLI > YAML > code defaults (``src/utils/defaults.py``). The MindSpore zoo
let argparse defaults beat the YAML; here the defaults are only the bottom layer of one
deep merge, and every key is validated against them.

    cfg = load_config("config/segformer.b2.1024x1024.city.yaml", ["--batch_size=4"])
    cfg.backbone            # attribute access
    cfg["dataset"]["name"]  # or dict access
"""
import copy
import difflib
import os

import yaml

from src.utils.defaults import CHOICES, DEFAULTS, LIST_FORMS
from src.utils.errors import UserError

BASE_KEY = "__BASE__"


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the file/key/value at fault."""


class Config(dict):
    """A nested dict with attribute access (``cfg.a.b``)."""

    def __init__(self, data=None):
        super().__init__()
        for key, value in (data or {}).items():
            self[key] = Config(value) if isinstance(value, dict) else value

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def __setattr__(self, name, value):
        self[name] = Config(value) if isinstance(value, dict) and not isinstance(value, Config) else value

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(self.to_dict(), memo))

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def dump(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# ----------------------------------------------------------------------------- YAML --

def _read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"YAML syntax error in {where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base, override):
    """Return ``base`` updated by ``override``; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_with_bases(path, stack=()):
    path = os.path.abspath(path)
    if path in stack:
        chain = " -> ".join(list(stack) + [path])
        raise ConfigError(f"__BASE__ cycle: {chain}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    _validate(data, DEFAULTS, f"in {path}")
    merged = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = deep_merge(merged, _load_with_bases(base_path, stack + (path,)))
    return deep_merge(merged, data)


# ------------------------------------------------------------------------ validation --

def _flat_keys(d, prefix=""):
    keys = []
    for k, v in d.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys.extend(_flat_keys(v, prefix + k + "."))
    return keys


def _unknown_key_error(key, where):
    valid = _flat_keys(DEFAULTS)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' ({where}){hint}")


def _type_ok(default, value):
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def _validate(data, schema, where, prefix=""):
    for key, value in data.items():
        full = prefix + key
        if key not in schema:
            raise _unknown_key_error(full, where)
        default = schema[key]
        if not _type_ok(default, value):
            raise ConfigError(
                f"config key '{full}' ({where}) expects {type(default).__name__}, "
                f"got {value!r} ({type(value).__name__})")
        # an empty default mapping (paramwise.custom_keys) has free-form keys: its consumer
        # checks them (optim.check_paramwise)
        if isinstance(default, dict) and default and isinstance(value, dict):
            _validate(value, default, where, full + ".")


def _check_choices(cfg):
    for key, choices in CHOICES.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(choices)}")


def _check_list_forms(cfg):
    """``LIST_FORMS``: ``--crop_size=512`` (one number for a pair) fails here, not in the
    data pipeline after the model is built."""
    for key, (count, form, positive) in LIST_FORMS.items():
        value = cfg[key]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if len(value) != count or not numbers or (positive and min(value) <= 0):
            rule = f"{count} {'positive ' if positive else ''}numbers"
            raise ConfigError(f"config key '{key}': expected {form} ({rule}, e.g. --{key}="
                              f"{','.join(map(str, DEFAULTS[key]))}), got {list(value)!r}")


# ------------------------------------------------------------------------------ CLI --

def _parse_bool(text, key):
    low = text.strip().lower()
    if low in ("true", "1", "yes", "y", "on"):
        return True
    if low in ("false", "0", "no", "n", "off"):
        return False
    raise ConfigError(f"--{key}: expected a boolean (true/false), got '{text}'")


def _parse_scalar(text, like, key):
    if isinstance(like, bool):
        return _parse_bool(text, key)
    try:
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"--{key}: expected {type(like).__name__}, got '{text}'") from None
    if isinstance(like, str):
        return text
    # no typed reference (default None): let YAML decide (numbers, bools, lists, null)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_value(text, current, key):
    if isinstance(current, (list, tuple)):
        body = text.strip()
        if body.startswith("["):
            try:
                items = yaml.safe_load(body)
            except yaml.YAMLError as err:
                raise ConfigError(f"--{key}: cannot parse list '{text}': {err}") from None
            if not isinstance(items, list):
                raise ConfigError(f"--{key}: expected a list, got '{text}'")
        else:
            items = [s for s in body.split(",") if s.strip() != ""]
        like = current[0] if current else None
        if like is None or isinstance(like, (list, dict)):
            return items
        return [_parse_scalar(str(i).strip(), like, key) for i in items]
    if isinstance(current, dict):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--{key}: cannot parse mapping '{text}': {err}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"--{key}: expected a mapping, got '{text}'")
        return value
    return _parse_scalar(text, current, key)


def split_cli(argv):
    """``['--a=1', '--b', '2', '--flag']`` -> ``[('a', '1'), ('b', '2'), ('flag', None)]``."""
    pairs = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected command-line argument '{arg}' (expected --key=value)")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 1
        else:
            key, value = body, None
        pairs.append((key.replace("-", "_") if "." not in key else key, value))
        i += 1
    return pairs


def _apply_cli(cfg, pairs):
    for key, text in pairs:
        parts = key.split(".")
        schema, node = DEFAULTS, cfg
        for part in parts[:-1]:
            if part not in schema or not isinstance(schema[part], dict):
                raise _unknown_key_error(key, "command line")
            schema, node = schema[part], node[part]
        leaf = parts[-1]
        if leaf not in schema:
            raise _unknown_key_error(key, "command line")
        current = node.get(leaf, schema[leaf])
        if text is None:
            if not isinstance(schema[leaf], bool):
                raise ConfigError(f"--{key} needs a value (--{key}=VALUE)")
            value = True
        else:
            value = _parse_value(text, current if current is not None else schema[leaf], key)
        node[leaf] = value
    return cfg


# ------------------------------------------------------------------------------ API --

def load_config(config_path="", overrides=(), values=None):
    """Defaults <- YAML chain of ``config_path`` <- ``values`` <- CLI ``overrides``.

    ``overrides``: list of command-line strings; it may itself contain ``--config_path``,
    which then selects the YAML file. ``values``: a mapping of typed values (the Python
    API's keyword overrides; a nested key as a dict, ``{"dataset": {"val_split": "test"}}``),
    checked like a YAML file.
    """
    pairs = split_cli(list(overrides))
    for key, value in pairs:
        if key == "config_path" and value:
            config_path = value
    merged = copy.deepcopy(DEFAULTS)
    if config_path:
        data = _load_with_bases(config_path)
        merged = deep_merge(merged, data)
        merged["config_path"] = config_path
    if values:
        _validate(dict(values), DEFAULTS, "keyword override")
        merged = deep_merge(merged, {k: list(v) if isinstance(v, tuple) else v
                                     for k, v in values.items()})
    merged = _apply_cli(merged, [(k, v) for k, v in pairs if k != "config_path"])
    _validate(merged, DEFAULTS, "after command-line overrides")
    _check_choices(merged)
    _check_list_forms(merged)
    return Config(merged)


def config_from_argv(argv):
    """The entry-point helper: ``cfg = config_from_argv(sys.argv[1:])``."""
    try:
        return load_config("", argv)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
