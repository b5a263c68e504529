"""Moved to ``beat_common.tomlfile`` (one TOML reader and writer that every role imports); kept
so that ``from beatd.tomlfile import read_toml`` goes on working."""
from beat_common.tomlfile import dumps, read_toml, toml_value, write_toml  # noqa: F401
