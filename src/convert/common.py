"""Rules shared by the checkpoint formats (segformer_formats.py, vit_formats.py)."""
import re

import numpy as np

from src.utils.errors import UserError


class ClassCountError(UserError, ValueError):
    """The checkpoint's classifier has another class count than the config."""


class UnmappedKeyError(UserError, ValueError):
    """A tensor no rename table knows, or a missing part of a fused tensor."""


class BadValuesError(UserError, ValueError):
    """A tensor the network would load is not a finite float array."""


def value_problem(value):
    """Why ``value`` cannot be a network weight (not floating point, NaN/inf), or None."""
    value = np.asarray(value)
    if value.dtype.kind != "f":
        return f"has dtype {value.dtype} where a float weight is expected"
    bad = int(value.size - np.count_nonzero(np.isfinite(value)))
    if bad:
        return f"holds {bad} non-finite value(s) (NaN/inf) out of {value.size}"
    return None


def check_values(converted, state_dict):
    """Every converted tensor (what the network will load) is a finite float array; the
    error names it and the checkpoint tensor it came from."""
    origin = {id(v): k for k, v in state_dict.items()}
    for name in sorted(converted):
        value = converted[name]
        problem = value_problem(value)
        if problem is None:
            continue
        source = origin.get(id(value))
        if source is None:  # concatenated from parts: name a faulty part of matching shape
            source = next((k for k, v in sorted(state_dict.items())
                           if np.ndim(v) == value.ndim and np.shape(v)[1:] == value.shape[1:]
                           and value_problem(v)), None)
            problem = f"(from parts such as '{source}') {problem}" if source else problem
        elif source != name:
            problem = f"(checkpoint key '{source}') {problem}"
        raise BadValuesError(f"tensor '{name}' {problem}; the checkpoint is damaged or not a "
                             f"set of trained weights")


def check_class_count(converted, skipped, cfg, class_tensors):
    """``class_tensors`` (name -> class axis) must hold ``cfg.class_num`` classes; with
    ``cfg.drop_head`` a different count is skipped (reported) instead of an error, leaving
    the classifier freshly initialised for fine-tuning on other classes."""
    present = [k for k in class_tensors if k in converted]
    if cfg is None or not present:
        return converted, skipped
    got = int(converted[present[0]].shape[class_tensors[present[0]]])
    if got == cfg.class_num:
        return converted, skipped
    if not cfg.get("drop_head", False):
        raise ClassCountError(f"'{present[0]}' has {got} classes but config key 'class_num' "
                              f"is {cfg.class_num}; pass --class_num={got}, or "
                              f"--drop_head=True to leave the classifier freshly initialised")
    kept = {k: v for k, v in converted.items() if k not in class_tensors}
    return kept, list(skipped) + [f"{k} ({got} classes, class_num {cfg.class_num})"
                                  for k in present]


# ------------------------------------------------------------------ rename tables --
#
# A table is a list of rows (upstream key regex, target name template[, part, part names]).
# Named groups fill the template's fields; a group called ``stage0`` is a 0-based index
# that fills ``{stage}`` plus one (stages counted from 1). A row with a part takes one
# slice of a fused tensor (HF keeps query/key/value as separate Linears where the target
# fuses them): the parts are concatenated in order along the output axis.

def _skipped(key, patterns):
    return any(re.fullmatch(p, key) for p in patterns)


def _rename(key, table, prefix=""):
    """(target name, (part, part names) or None) by the first row matching ``key``."""
    for row in table:
        match = re.fullmatch(row[0], key)
        if match:
            fields = match.groupdict()
            if "stage0" in fields:
                fields["stage"] = int(fields.pop("stage0")) + 1
            return prefix + row[1].format(**fields), (row[2:4] if len(row) > 2 else None)
    return None, None


def apply_tables(state_dict, rows, skip):
    """rows: list of (table, key prefix to strip, target prefix). Every key is renamed by
    the first table row matching it, or skipped when it matches a ``skip`` pattern; any
    other key is an UnmappedKeyError. Returns (converted, skipped keys)."""
    converted, parts, skipped = {}, {}, []
    for key in sorted(state_dict):
        value = state_dict[key]
        name, part = None, None
        for table, strip, add in rows:
            if key.startswith(strip):
                name, part = _rename(key[len(strip):], table, add)
                if name:
                    break
        if name is None:
            if _skipped(key, skip):
                skipped.append(key)
                continue
            raise UnmappedKeyError(f"unexpected tensor '{key}' {tuple(np.shape(value))}: "
                                   f"no conversion-table row matches it")
        if part is None:
            converted[name] = np.asarray(value)
        else:
            index, names = part
            parts.setdefault(name, (names, {}))[1][index] = np.asarray(value)
    for name, (names, found) in parts.items():
        absent = [names[i] for i in range(len(names)) if i not in found]
        if absent:
            raise UnmappedKeyError(f"'{name}': the '{absent[0]}' part of this fused tensor is "
                                   f"missing from the checkpoint")
        converted[name] = np.concatenate([found[i] for i in range(len(names))], axis=0)
    return converted, skipped
