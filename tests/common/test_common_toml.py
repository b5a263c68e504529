"""beat_common.tomlfile: the one TOML reader and writer of every role; what is written reads back
the same, strings with any character included."""
import math
import tomllib

import pytest

from beat_common.tomlfile import dumps, read_toml, toml_str, toml_value, write_toml


class Bad(Exception):
    pass


DOC = {
    "node_id": 3, "hash": "sha3-256", "own_macs": ["02:00:00:00:00:01", "02:00:00:00:00:02"],
    "ratio": 0.25, "on": True, "off": False, "big": (1 << 64) - 2,
    "store": {"path": '/tmp/a "quoted" \\ path', "ring_size": "64MiB", "sync": "periodic"},
    "neighbours": [{"node_id": 2, "mac": "02:be:00:00:00:02", "interface": "eth0"},
                   {"node_id": 4, "mac": "02:be:00:00:00:04", "interface": "eth1"}],
    "a table": {"inner": {"deep": 1}, "list": [1, 2, 3]},
}


def test_dumps_reads_back_the_same():
    text = dumps(DOC, header="written by a test\nsecond line")
    assert text.startswith("# written by a test\n# second line\n")
    assert tomllib.loads(text) == DOC


@pytest.mark.parametrize("s", ["", "plain", "tab\there", "nl\nand\rcr", "del\x7f", "nul\x00",
                               "bell\x07 esc\x1b", 'both "\\', "unicode é ✓ 𝄞", "\u2028"])
def test_every_string_reads_back(s):
    assert tomllib.loads(f"v = {toml_str(s)}")["v"] == s


def test_values():
    assert toml_value(True) == "true" and toml_value(7) == "7"
    assert tomllib.loads(f"v = {toml_value(math.inf)}")["v"] == math.inf
    assert tomllib.loads(f"v = {toml_value({'a': [1, 'x']})}")["v"] == {"a": [1, "x"]}
    with pytest.raises(TypeError, match="object"):
        toml_value(object())


def test_none_is_left_out_and_a_file_round_trips(tmp_path):
    p = tmp_path / "c.toml"
    write_toml(p, {"a": 1, "b": None, "t": {"c": None, "d": "x"}}, mode=0o600)
    assert read_toml(p, Bad, "configuration") == {"a": 1, "t": {"d": "x"}}
    assert (p.stat().st_mode & 0o777) == 0o600


def test_read_errors_name_the_path_and_what(tmp_path):
    with pytest.raises(Bad, match=r"nope\.toml: cannot read the SLA file"):
        read_toml(tmp_path / "nope.toml", Bad, "SLA file")
    p = tmp_path / "bad.toml"
    p.write_text("a = = 1\n")
    with pytest.raises(Bad, match=r"bad\.toml: not valid TOML"):
        read_toml(p, Bad, "configuration")


def test_a_header_cannot_add_a_key():
    """A header built from a file path with a newline (the lab's "written by ... (PATH)") stays
    comment lines: the path cannot add a key or a table to a router's configuration."""
    path = '/tmp/x\n[[neighbours]]\nnode_id = 3\nmac = "02:00:00:00:00:03"\n\x7f'
    text = dumps({"node_id": 1}, header=f"written by `beat-lab up` ({path})")
    assert all(line.startswith("#") for line in text.splitlines()[:-1])
    assert tomllib.loads(text) == {"node_id": 1}
