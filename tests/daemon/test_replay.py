"""``beatd replay``: captures through the fast path into the store, the CLI, and the configuration."""
import hashlib
import json
import os
import struct
import subprocess
import sys

import pytest

from beatd import cli
from conftest import real_pcaps, require_real_pcaps
from beatd.config import Config, ConfigError, from_dict, load, parse_size
from beatd.store import Store
from fastpath.output import NONE, REASON_CLASS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REAL = real_pcaps()
NODE = 7


def run(capsys, *argv):
    rc = cli.main(["replay", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def parse_json(out):
    lines = [json.loads(line) for line in out.splitlines()]
    assert "summary" in lines[-1] and all("summary" not in x for x in lines[:-1])
    return lines[:-1], lines[-1]["summary"]


def fp(node_id, row):
    return hashlib.sha3_256(b"BEAT-FP-v1" + struct.pack(">QQQ", node_id, row["prev_id"],
                                                        row["next_id"])
                            + bytes.fromhex(row["pd"]) + struct.pack(">Q", row["t_ns"])).hexdigest()


def record_bytes(row):
    return (struct.pack(">QQQ", row["t_ns"], row["prev_id"], row["next_id"])
            + bytes.fromhex(row["pd"]) + bytes.fromhex(row["ft"]))


def test_every_real_capture_replays(tmp_path, capsys):
    frames = 0
    for i, path in enumerate(require_real_pcaps()):
        store = tmp_path / f"s{i}"
        rc, out, err = run(capsys, path, "--node-id", NODE, "--json", "--store", store,
                           "--batch-frames", 64)
        assert rc == 0, (path, err)
        rows, s = parse_json(out)
        assert s["frames"] == s["ingress"] + s["egress"] + s["dropped"], path
        assert s["records"] == len(rows) == s["ingress"] + s["egress"] - s["joined"], path
        if s["egress"] == 0:
            assert s["records"] + s["dropped"] == s["frames"], path
        assert s["dropped"] == sum(s["dropped_by_class"].values())
        assert set(s["dropped_by_class"]) == set(REASON_CLASS.values())
        for row in rows:
            assert set(row) == {"t_ns", "prev_id", "next_id", "pd", "ft", "fp"}
            assert len(row["pd"]) == 32 and len(row["ft"]) == 16 and row["pd"] == row["pd"].lower()
            assert row["fp"] == fp(NODE, row)
        with Store(store, NODE, "sha3-256", 256 << 20) as st:
            assert st.verify() == []
            assert list(st.iter_records()) == [record_bytes(r) for r in rows]
            assert st.stats()["records"] == len(rows)
        frames += s["frames"]
    assert frames > 1000


def test_human_summary_and_a_real_subprocess(tmp_path):
    path = require_real_pcaps()[0]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "beatd", "replay", path, "--node-id", "3"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for word in ("frames", "proof records", "dropped", "non-IP", "malformed", "receipts",
                 "segments", "ring"):
        assert word in r.stdout
    assert r.stderr == ""


def test_blake2b_and_config_file(tmp_path, capsys):
    require_real_pcaps()
    cfg = tmp_path / "b.toml"
    cfg.write_text('node_id = 9\nhash = "blake2b-256"\n[governance]\nsegment_records = 3\n')
    rc, out, err = run(capsys, REAL[0], "--config", cfg, "--json")
    assert rc == 0, err
    rows, s = parse_json(out)
    assert s["node_id"] == 9 and s["hash"] == "blake2b-256"
    for row in rows:
        want = hashlib.blake2b(b"BEAT-FP-v1" + struct.pack(">QQQ", 9, row["prev_id"], row["next_id"])
                               + bytes.fromhex(row["pd"]) + struct.pack(">Q", row["t_ns"]),
                               digest_size=32).hexdigest()
        assert row["fp"] == want
    if rows:
        assert s["segments"] >= len(rows) // 3


def test_replay_resumes_a_store(tmp_path, capsys):
    big = max(require_real_pcaps(), key=os.path.getsize)
    store = tmp_path / "s"
    rc, out, _ = run(capsys, big, "--node-id", 4, "--store", store, "--json")
    rows1, s1 = parse_json(out)
    rc2, out, _ = run(capsys, big, "--node-id", 4, "--store", store, "--json")
    rows2, s2 = parse_json(out)
    assert rc == rc2 == 0
    with Store(store, 4, "sha3-256", 256 << 20) as st:
        assert st.verify() == []
        assert list(st.iter_records()) == [record_bytes(r) for r in rows1 + rows2]
        assert st.commitments()[-1][0] == s1["segments"] + s2["segments"] - 1


# -- errors: one line on stderr, exit 2 -----------------------------------------------------------

def test_missing_file(tmp_path, capsys):
    rc, out, err = run(capsys, tmp_path / "nope.pcap", "--node-id", 1)
    assert rc == 2 and "nope.pcap" in err and "Traceback" not in err


def test_garbage_file(tmp_path, capsys):
    p = tmp_path / "junk.pcap"
    p.write_bytes(b"hello, not a capture at all")
    rc, out, err = run(capsys, p, "--node-id", 1)
    assert rc == 2 and "junk.pcap: not a pcap or pcapng file (magic 0x6c6c6568)" in err


def test_bad_config(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text('node_id = 1\n[[neighbours]]\nnode_id = 2\nmac = "zz:00:00:00:00:01"\n')
    rc, out, err = run(capsys, REAL[0] if REAL else p, "--config", p)
    assert rc == 2 and 'neighbours[0].mac: "zz:00:00:00:00:01" is not a MAC address' in err


def test_no_node_id(tmp_path, capsys):
    rc, out, err = run(capsys, tmp_path / "x.pcap")
    assert rc == 2 and "node_id" in err


def test_store_of_another_node(tmp_path, capsys):
    require_real_pcaps()
    store = tmp_path / "s"
    assert run(capsys, REAL[0], "--node-id", 1, "--store", store)[0] == 0
    rc, out, err = run(capsys, REAL[0], "--node-id", 2, "--store", store)
    assert rc == 2 and "belongs to node_id 1, not 2" in err


def test_truncated_capture_is_counted_not_fatal(tmp_path, capsys):
    require_real_pcaps()
    data = open(max(REAL, key=os.path.getsize), "rb").read()
    p = tmp_path / "cut.pcap"
    p.write_bytes(data[:len(data) * 2 // 3])
    rc, out, err = run(capsys, p, "--node-id", 1, "--json")
    assert rc == 0, err
    _, s = parse_json(out)
    assert s["capture_truncated"] == 1 and s["frames"] > 0


# -- configuration --------------------------------------------------------------------------------

def test_config_defaults_and_pipeline_kwargs():
    c = from_dict({"node_id": 3})
    # the dataclass's defaults, except the ledger files, which from_dict puts beside the store
    assert c == Config(node_id=3, ledger_path="/var/lib/beatd/ledger.lmdb",
                       ledger_key="/var/lib/beatd/device.ed25519", ledger_path_default=True,
                       ledger_key_default=True)
    kw = c.pipeline_kwargs()
    assert kw == {"node_id": 3, "hash_name": "sha3-256", "own_macs": (), "neighbours": {},
                  "join_window_ns": 50_000_000, "receipt_epoch_ns": 1_000_000_000,
                  "segment_records": 1024, "anchor_period_ns": 10_000_000_000,
                  "max_receipts_per_epoch": 1024}
    import fastpath
    fastpath.Pipeline(**kw)            # accepted as it is


def test_config_full(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("""
node_id = 12
hash = "blake2b-256"
own_macs = ["02:00:00:00:00:01", "02-00-00-00-00-0A"]
[[neighbours]]
node_id = 2
mac = "02:00:00:00:00:02"
ip = "10.0.0.2"
[[neighbours]]
node_id = 3
mac = "02:00:00:00:00:03"
[store]
path = "/tmp/x"
ring_size = "64MiB"
map_size = "1GiB"
sync = "always"
[governance]
threshold_s = 600
receipt_epoch_ms = 500
anchor_period_s = 5
segment_records = 100
join_window_ms = 20
""")
    c = load(p)
    assert c.own_macs == (bytes.fromhex("020000000001"), bytes.fromhex("02000000000a"))
    assert c.neighbour_map() == {bytes.fromhex("020000000002"): 2, bytes.fromhex("020000000003"): 3}
    assert c.neighbours[0].ip == "10.0.0.2"
    assert (c.ring_size, c.map_size, c.sync) == (64 << 20, 1 << 30, "always")
    assert c.pipeline_kwargs()["receipt_epoch_ns"] == 500_000_000
    assert c.pipeline_kwargs()["join_window_ns"] == 20_000_000
    assert c.threshold_ns == 600 * 10**9


@pytest.mark.parametrize("text, message", [
    ('node_id = 0', "node_id: 0 is not a node id"),
    ('node_id = "one"', 'node_id: "one" is not a node id'),
    ('hash = "md5"', 'hash: "md5" is not one of sha3-256, blake2b-256'),
    ('own_macs = ["02:00:00:00:00"]', 'own_macs[0]: "02:00:00:00:00" is not a MAC address'),
    ('colour = "blue"', "colour: unknown key"),
    ('[store]\nring = 5', "store.ring: unknown key"),
    ('[store]\nring_size = "lots"', 'store.ring_size: "lots" is not a size'),
    ('[store]\nsync = "sometimes"', 'store.sync: "sometimes" is not one of periodic, always, never'),
    ('[governance]\nsegment_records = 0', "governance.segment_records: 0 must be more than 0"),
    ('[governance]\njoin_window_ms = "x"', 'governance.join_window_ms: "x" is not a number'),
    ('[[neighbours]]\nnode_id = 2\nmac = "02:00:00:00:00:02"\n[[neighbours]]\nnode_id = 3\n'
     'mac = "02:00:00:00:00:03"\n[[neighbours]]\nnode_id = 4\nmac = "zz:00:00:00:00:04"',
     'neighbours[2].mac: "zz:00:00:00:00:04" is not a MAC address'),
    ('[[neighbours]]\nnode_id = 2', "neighbours[0].mac: missing"),
    ('[[neighbours]]\nnode_id = 2\nmac = "02:00:00:00:00:02"\nport = 3', "neighbours[0].port: unknown"),
    ('[[neighbours]]\nnode_id = 2\nmac = "02:00:00:00:00:02"\nip = "10.0.0.300"',
     'neighbours[0].ip: "10.0.0.300" is not an IP address'),
    ('node_id = [', "not valid TOML"),
])
def test_config_errors_name_the_key_and_value(tmp_path, text, message):
    p = tmp_path / "c.toml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_parse_size():
    assert parse_size("256MiB") == 256 << 20
    assert parse_size("1GB") == 10**9
    assert parse_size(4096) == 4096
    assert parse_size("1.5KiB") == 1536
    with pytest.raises(ConfigError):
        parse_size(-1)
    with pytest.raises(ConfigError):
        parse_size(True)


def test_none_is_never_an_id():
    assert NONE == (1 << 64) - 1


def test_replay_without_json_stores_the_same_as_with_it(tmp_path, capsys):
    """Without --json replay asks the pipeline for no records output and for its segments as
    views (no copies): the store, the summary and the JSON lines' records are the same as with
    --json, on every real capture and on a capture of many segments."""
    from capture_files import write_pcap
    many = tmp_path / "many.pcap"
    frame = bytes.fromhex("020000000001" "02000000aa01" "0800")
    recs = []
    for i in range(5000):
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 46, i & 0xFFFF, 0, 64, 17, 0,
                         bytes((10, 0, 0, i % 7)), bytes((10, 1, 0, 1))) + bytes(26)
        recs.append((1_700_000_000 + i // 1000, (i % 1000) * 1000, frame + ip, 60))
    write_pcap(many, recs)
    dumps = {}
    for i, path in enumerate([many] + list(REAL)):
        for json_out in (False, True):
            store = tmp_path / f"s{i}-{json_out}"
            rc, out, err = run(capsys, path, "--node-id", NODE, "--store", store,
                               "--batch-frames", 256, *(["--json"] if json_out else []))
            assert rc == 0, (path, err)
            with Store(store, NODE, "sha3-256", 256 << 20) as st:
                assert st.verify() == []
                dumps[json_out] = (st.stats(), st.segments(), st.commitments(),
                                   list(st.iter_records()), st.receipts(), st.counters(),
                                   st.resume_state())
            if json_out:
                rows, _ = parse_json(out)
                assert [record_bytes(r) for r in rows] == dumps[True][3]
        assert dumps[False] == dumps[True], path
        if path == many:
            assert len(dumps[True][1]) == 5   # segments across batches
