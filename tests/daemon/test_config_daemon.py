"""The daemon's configuration keys (interfaces, [capture], [daemon], neighbours by IP): defaults,
values, and errors that name the key and the value."""
import pytest

from beatd.config import DEFAULTS, ConfigError, from_dict, load, parse_listen


def test_defaults():
    c = from_dict({"node_id": 1})
    assert c.interfaces == ()
    assert (c.workers, c.block_size, c.block_count, c.frame_size, c.block_timeout_ms,
            c.fanout_mode) == (0, 1 << 20, 16, 2048, 10, "cpu")
    assert (c.commit_interval_ms, c.metrics_listen, c.control_socket, c.log_format,
            c.neighbour_refresh) == (50, "127.0.0.1:9477", "/run/beatd/control.sock", "json",
                                     True)
    assert c.metrics_address == ("127.0.0.1", 9477)
    assert c.ring_kwargs() == {"block_size": 1 << 20, "block_count": 16, "frame_size": 2048,
                               "block_timeout_ms": 10, "fanout_mode": "cpu"}
    assert set(DEFAULTS["capture"]) == {"workers", "block_size", "block_count", "frame_size",
                                        "block_timeout_ms", "fanout_mode"}


def test_values():
    c = from_dict({"node_id": 1, "interfaces": ["eth0", "eth1.100"],
                   "capture": {"workers": 4, "block_size": "4MiB", "block_count": 8,
                               "frame_size": 4096, "block_timeout_ms": 5, "fanout_mode": "hash"},
                   "daemon": {"commit_interval_ms": 100, "metrics_listen": "",
                              "control_socket": "", "log_format": "text",
                              "neighbour_refresh": False}})
    assert c.interfaces == ("eth0", "eth1.100")
    assert (c.workers, c.block_size, c.fanout_mode) == (4, 4 << 20, "hash")
    assert c.metrics_address is None and c.control_socket == ""
    assert c.log_format == "text" and c.neighbour_refresh is False


def test_neighbour_by_ip_only():
    c = from_dict({"node_id": 1, "neighbours": [{"node_id": 2, "ip": "10.0.0.2"},
                                                {"node_id": 3, "mac": "02:00:00:00:00:03",
                                                 "ip": "fe80::0:1"}]})
    assert c.neighbours[0].mac is None and c.neighbours[0].ip == "10.0.0.2"
    assert c.neighbours[1].ip == "fe80::1"
    assert c.neighbour_map() == {bytes.fromhex("020000000003"): 3}


@pytest.mark.parametrize("listen,want", [
    ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9477", ("::1", 9477)),
    (":9100", ("0.0.0.0", 9100)), ("localhost:80", ("localhost", 80))])
def test_parse_listen(listen, want):
    assert parse_listen(listen) == want


@pytest.mark.parametrize("raw,message", [
    ({"interfaces": "eth0"}, 'interfaces: "eth0" is not a list of interface names'),
    ({"interfaces": ["eth0", ""]}, 'interfaces[1]: "" is not an interface name'),
    ({"interfaces": ["a" * 16]}, f'interfaces[0]: "{"a" * 16}" is not an interface name'),
    ({"interfaces": ["eth0", "eth0"]}, 'interfaces[1]: "eth0" is already interfaces[0]'),
    ({"interfaces": [3]}, "interfaces[0]: 3 is not an interface name"),
    ({"capture": {"workers": -1}}, "capture.workers: -1 is not in 0..1024"),
    ({"capture": {"workers": "two"}}, 'capture.workers: "two" is not an integer'),
    ({"capture": {"block_size": "3000"}}, 'capture.block_size: "3000" (3000 bytes) is not a '
                                          "power of two multiple of the page size 4096"),
    ({"capture": {"block_size": "lots"}}, 'capture.block_size: "lots" is not a size'),
    ({"capture": {"block_count": 0}}, "capture.block_count: 0 must be more than 0"),
    ({"capture": {"frame_size": 100}}, "capture.frame_size: 100 is not a multiple of 16"),
    ({"capture": {"frame_size": 2056}}, "capture.frame_size: 2056 is not a multiple of 16"),
    ({"capture": {"block_size": 4096, "frame_size": 8192}},
     "capture.frame_size: 8192 is more than capture.block_size (4096 bytes)"),
    ({"capture": {"block_timeout_ms": 0}}, "capture.block_timeout_ms: 0 must be more than 0"),
    ({"capture": {"fanout_mode": "rr"}}, 'capture.fanout_mode: "rr" is not one of cpu, hash, lb'),
    ({"capture": {"ring": 1}}, "capture.ring: unknown key"),
    ({"capture": []}, "capture: [] is not a table"),
    ({"daemon": {"commit_interval_ms": 0}}, "daemon.commit_interval_ms: 0 must be more than 0"),
    ({"daemon": {"commit_interval_ms": 2.5}}, "daemon.commit_interval_ms: 2.5 is not an integer"),
    ({"daemon": {"metrics_listen": "9477"}}, 'daemon.metrics_listen: "9477" is not an address'),
    ({"daemon": {"metrics_listen": "1.2.3.4:99999"}},
     'daemon.metrics_listen: "1.2.3.4:99999" is not an address'),
    ({"daemon": {"metrics_listen": 9477}}, "daemon.metrics_listen: 9477 is not an address"),
    ({"daemon": {"control_socket": "run/x.sock"}},
     'daemon.control_socket: "run/x.sock" is not an absolute path'),
    ({"daemon": {"control_socket": "/" + "x" * 120}}, "daemon.control_socket: "),
    ({"daemon": {"log_format": "xml"}}, 'daemon.log_format: "xml" is not one of json, text'),
    ({"daemon": {"neighbour_refresh": "yes"}},
     'daemon.neighbour_refresh: "yes" is not true or false'),
    ({"daemon": {"verbose": True}}, "daemon.verbose: unknown key"),
    ({"governance": {"max_receipts_per_epoch": 0}},
     "governance.max_receipts_per_epoch: 0 must be more than 0"),
    ({"governance": {"max_receipts_per_epoch": 2.5}},
     "governance.max_receipts_per_epoch: 2.5 is not an integer"),
    ({"governance": {"max_receipts_per_epoch": "many"}},
     'governance.max_receipts_per_epoch: "many" is not an integer'),
    ({"governance": {"max_receipts_per_epoch": (1 << 24) + 1}},
     f"governance.max_receipts_per_epoch: {(1 << 24) + 1} is more than {1 << 24}"),
    ({"neighbours": [{"node_id": 2}]}, "neighbours[0].mac: missing"),
    ({"neighbours": [{"mac": "02:00:00:00:00:02"}]}, "neighbours[0].node_id: missing"),
    ({"neighbours": [{"node_id": 2, "ip": "10.0.0.300"}]},
     'neighbours[0].ip: "10.0.0.300" is not an IP address'),
    ({"neighbours": [{"node_id": 2, "ip": "10.0.0.2"}, {"node_id": 3, "ip": "10.0.0.2"}]},
     'neighbours[1].ip: "10.0.0.2" is already neighbours[0].ip'),
    ({"neighbours": [{"node_id": 2, "ip": "10.0.0.2", "interface": "eth 0"}]},
     'neighbours[0].interface: "eth 0" is not an interface name'),
    ({"neighbours": [{"node_id": 2, "ip": "10.0.0.2", "interface": 3}]},
     "neighbours[0].interface: 3 is not an interface name"),
    ({"interfaces": ["eth0", "eth1"],
      "neighbours": [{"node_id": 2, "mac": "02:00:00:00:00:02", "interface": "eth2"}]},
     'neighbours[0].interface: "eth2" is not one of interfaces (eth0, eth1)'),
    ({"interfaces": [f"e{i}" for i in range(64)]}, "interfaces: 64 names, at most 63"),
])
def test_errors_name_key_and_value(raw, message):
    with pytest.raises(ConfigError) as e:
        from_dict({"node_id": 1, **raw})
    assert message in str(e.value)


def test_load_prefixes_the_file(tmp_path):
    p = tmp_path / "beatd.toml"
    p.write_text('node_id = 1\n[capture]\nfanout_mode = "rr"\n')
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value).startswith(f"{p}: capture.fanout_mode")


# -- the capture ring's geometry: the ring's own C check, at load time, naming the key ---------------

def _capture_config(tmp_path, capture_lines):
    p = tmp_path / "beatd.toml"
    p.write_text("node_id = 1\n[capture]\n" + "".join(f"{line}\n" for line in capture_lines))
    return p


@pytest.mark.parametrize("lines,message", [
    # 128 is a multiple of 16 but cannot hold the TPACKET_V3 header and a minimum frame
    (["frame_size = 128"], "capture.frame_size: 128 must be at least 132 (TPACKET3_HDRLEN"),
    # 5 s: the kernel's block retire timeout is refused by the ring beyond 1 s
    (["block_timeout_ms = 5000"], "capture.block_timeout_ms: 5000 must be in 1..1000"),
    # 4 GiB of ring memory per ring: more than the ring's 1 GiB
    (['block_size = "1GiB"', "block_count = 4"],
     "capture.block_count: 4 exceeds 1073741824 bytes (1 GiB) of ring: 4 blocks of "
     "capture.block_size 1073741824 bytes"),
    (['block_size = "256MiB"', "block_count = 16"], "capture.block_count: 16 exceeds"),
])
def test_ring_geometry_refused_by_the_c_check_names_the_key(tmp_path, lines, message):
    from fastpath import _native as fastpath_native
    p = _capture_config(tmp_path, lines)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value).startswith(f"{p}: {message}"), str(e.value)
    # the same numbers are refused by the ring itself (one rule): the C check says the same thing
    c = {"block_size": 1 << 20, "block_count": 16, "frame_size": 2048, "block_timeout_ms": 10}
    for line in lines:
        k, v = (x.strip() for x in line.split("="))
        c[k] = {'"1GiB"': 1 << 30, '"256MiB"': 256 << 20}.get(v) or int(v)
    with pytest.raises(fastpath_native.RingError):
        fastpath_native.ring_geometry(**c)


def test_ring_geometry_accepted(tmp_path):
    c = load(_capture_config(tmp_path, ['block_size = "4MiB"', "block_count = 64",
                                        "frame_size = 144", "block_timeout_ms = 1000"]))
    assert (c.block_size, c.block_count, c.frame_size, c.block_timeout_ms) == (4 << 20, 64, 144,
                                                                               1000)
    from fastpath._native import ring_geometry
    assert ring_geometry(**{k: v for k, v in c.ring_kwargs().items()
                            if k != "fanout_mode"})["ring_bytes"] == 256 << 20


def test_example_configuration_is_valid():
    """packaging/beatd.toml, the example shipped with the unit, loads."""
    import os
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    c = load(os.path.join(here, "packaging", "beatd.toml"))
    assert c.node_id is not None and c.store_path == "/var/lib/beatd"
    assert c.control_socket == "/run/beatd/control.sock"


def test_receipt_cap_reaches_the_pipeline_and_sizes_the_default_map():
    c = from_dict({"node_id": 1})
    assert c.max_receipts_per_epoch == 1024
    assert c.pipeline_kwargs()["max_receipts_per_epoch"] == 1024
    c = from_dict({"node_id": 1, "store": {"ring_size": "16MiB"},
                   "governance": {"max_receipts_per_epoch": 50_000, "threshold_s": 600}})
    assert c.pipeline_kwargs()["max_receipts_per_epoch"] == 50_000
    # the default map holds the ring four times, 1 GiB, and what the cap lets through in the
    # threshold (two roles, the overflow receipt included, plus the pruning lag) at 256 B each
    by_cap = 2 * 50_001 * (600 + 3 * 10) * 256
    assert c.receipts_bound_bytes == by_cap
    assert c.effective_map_size == 4 * (16 << 20) + (1 << 30) + by_cap
    # a small cap: the receipts the ring's records can give bound it instead
    c = from_dict({"node_id": 1, "store": {"ring_size": "16MiB"},
                   "governance": {"max_receipts_per_epoch": 1, "threshold_s": 10}})
    assert c.receipts_bound_bytes == 2 * ((16 << 20) // 56) * 256
    # a map given is taken as it is
    c = from_dict({"node_id": 1, "store": {"ring_size": "16MiB", "map_size": "64MiB"}})
    assert c.effective_map_size == 64 << 20


# -- where a neighbour is: its interface, from the configuration or the kernel's table ----------------

A, B, C = (bytes.fromhex(f"02000000000{i}") for i in "abc")


def test_neighbour_interface_is_optional():
    c = from_dict({"node_id": 1, "interfaces": ["eth0", "eth1"], "neighbours": [
        {"node_id": 2, "mac": "02:00:00:00:00:0a", "interface": "eth1"},
        {"node_id": 3, "mac": "02:00:00:00:00:0b"}]})
    assert [n.interface for n in c.neighbours] == ["eth1", None]
    # replay has no interfaces: the MAC names the neighbour, as before
    assert c.neighbour_map() == {A: 2, B: 3}
    # without interfaces (every one, found at start) the daemon checks the name at start
    c = from_dict({"node_id": 1, "neighbours": [{"node_id": 2, "ip": "10.0.0.2",
                                                  "interface": "eth7"}]})
    assert c.neighbours[0].interface == "eth7"


def test_compute_map_binds_each_mac_to_where_its_neighbour_is():
    from beatd.config import Neighbour
    from beatd.neighbours import compute_map, pipeline_map, unbound
    neighbours = [Neighbour(2, A, None, "eth1"),          # configured MAC and interface
                  Neighbour(3, B),                        # configured MAC only: every interface
                  Neighbour(4, None, "10.0.0.4"),         # IP only: the kernel's MAC and interface
                  Neighbour(5, None, "10.0.0.5", "br0"),  # IP and interface: the kernel's MAC there
                  Neighbour(6, None, "10.0.0.6")]         # the kernel has a configured MAC for it
    kernel = {"10.0.0.4": {"eth2": C, "eth3": C}, "10.0.0.5": {"eth9": bytes.fromhex("02000000000d")},
              "10.0.0.6": {"eth1": A}, "10.0.0.7": {"eth1": bytes.fromhex("02000000000e")}}
    m = compute_map(neighbours, kernel)
    assert m == {A: (2, ("eth1",)), B: (3, None), C: (4, ("eth2", "eth3")),
                 bytes.fromhex("02000000000d"): (5, ("br0",))}
    assert unbound(neighbours) == [neighbours[1]]
    slots = {"eth0": 1, "eth1": 2, "eth2": 3}
    assert pipeline_map(m, slots) == {A: (2, (2,)), B: 3, C: (4, (3,)),
                                      bytes.fromhex("02000000000d"): (5, ())}
