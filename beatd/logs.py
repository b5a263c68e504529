"""beatd's logging, in one place: one line per event on stderr, JSON or text (daemon.log_format).

Every module logs through ``logging.getLogger("beatd...")``; ``event(log, level, msg, **fields)``
attaches named fields (``interface="eth0"``, ``errno=19``) that both formats print. Under systemd,
stderr goes to the journal; ``journalctl -u beatd -o cat | jq`` reads the JSON lines.
"""
import json
import logging
import sys
import time

__all__ = ["setup", "event", "JsonFormatter", "TextFormatter"]

def _fields(record):
    return getattr(record, "fields", None) or {}


def _stamp(created):
    ms = int(created % 1 * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., <fields>}`` on one line."""

    def format(self, record):
        out = {"ts": _stamp(record.created), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.000Z info beatd: msg key=value ...``"""

    def format(self, record):
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{_stamp(record.created)} {record.levelname.lower()} {record.name}: " \
               f"{record.getMessage()}" + (f" {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(log_format="json", level=logging.INFO, stream=None):
    """Send the ``beatd`` loggers to ``stream`` (stderr) in ``log_format``; returns the logger."""
    log = logging.getLogger("beatd")
    for h in list(log.handlers):
        log.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return log


def event(log, level, msg, **fields):
    """Log ``msg`` with named fields (one event, one line)."""
    log.log(level, msg, extra={"fields": fields})
