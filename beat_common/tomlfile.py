"""TOML in and out for every BEAT file (daemon configuration, lab topology, SLA, the governance's
configuration, the files the testbed writes): one reader, one writer.

``read_toml(path, error, what)`` raises the caller's own error class with the path in the message.
``dumps(doc, header=...)`` writes a document of tables, arrays of tables and scalar values;
``toml_value(v)`` one value (for a writer that must place a comment beside it). Strings are TOML
basic strings with every control character escaped, so what is written reads back the same.
"""
import datetime
import math
import os
import tomllib

__all__ = ["read_toml", "loads", "dumps", "write_toml", "toml_value", "toml_str", "toml_key"]

loads = tomllib.loads


def read_toml(path, error, what):
    """The TOML document at ``path``; ``error(message)`` is raised for an unreadable file (naming
    ``what`` it should have been) or a file that is not valid TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def toml_str(s):
    """``str(s)`` as a TOML basic string."""
    out = []
    for ch in str(s):
        esc = _ESCAPES.get(ch)
        if esc is None and (ord(ch) < 0x20 or ord(ch) == 0x7F):
            esc = f"\\u{ord(ch):04x}"
        out.append(esc or ch)
    return '"' + "".join(out) + '"'


def toml_key(k):
    """A key: bare when it can be, else quoted."""
    k = str(k)
    if k and all(c.isascii() and (c.isalnum() or c in "-_") for c in k):
        return k
    return toml_str(k)


def toml_value(v):
    """One TOML value: str, bool, int, float (finite or not), date/time, list, or dict (inline)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, datetime.time) and v.tzinfo is not None:
        # TOML has local times only: "01:02:03+00:00" would not read back
        raise TypeError(f"TOML: a time of day with an offset cannot be written: {v!r}")
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"TOML: cannot write a value of type {type(v).__name__}: {v!r}")


def _is_table_array(v):
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)


def _emit(lines, path, table):
    scalars = [(k, v) for k, v in table.items()
               if not isinstance(v, dict) and not _is_table_array(v)]
    for k, v in scalars:
        lines.append(f"{toml_key(k)} = {toml_value(v)}")
    for k, v in table.items():
        name = path + [toml_key(k)]
        if isinstance(v, dict):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(name) + "]")
            _emit(lines, name, v)
        elif _is_table_array(v):
            for item in v:
                if lines:
                    lines.append("")
                lines.append("[[" + ".".join(name) + "]]")
                _emit(lines, name, item)


def _comment(line):
    """One comment line's text: TOML allows no control character but tab in a comment, so each
    other one is shown escaped (the file must still read)."""
    return "".join(ch if ch == "\t" or not (ord(ch) < 0x20 or ord(ch) == 0x7F)
                   else f"\\u{ord(ch):04x}" for ch in line)


def dumps(doc, header=None):
    """The TOML text of ``doc`` (a dict): its scalar values first, then its tables (``dict``) and
    arrays of tables (a list of dicts), recursively. ``None`` values are left out. ``header``: a
    comment (one or more lines) written first."""
    def strip(d):
        return {k: (strip(v) if isinstance(v, dict) else
                    [strip(x) for x in v] if _is_table_array(v) else v)
                for k, v in d.items() if v is not None}
    lines = [f"# {_comment(line)}" if line else "#" for line in (header or "").splitlines()]
    _emit(lines, [], strip(doc))
    return "\n".join(lines) + "\n"


def write_toml(path, doc, header=None, mode=None):
    """Write ``dumps(doc, header)`` to ``path`` (through a temporary file renamed over it; with
    ``mode``, the file's permissions)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(dumps(doc, header))
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
