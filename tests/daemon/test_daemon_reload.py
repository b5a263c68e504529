"""Reload (SIGHUP): the whole configuration compared with the running one, key by key, against the
keys a reload applies (beatd.config.RELOADABLE_KEYS); each other changed key is logged by its TOML
name as needing a restart, the reloadable ones apply, and a reload with nothing changed says
nothing about a restart."""
import dataclasses
import logging
import threading

import pytest

from beatd import config as bconfig
from beatd.control import request
from beatd.daemon import Daemon

from conftest import wait_for
from test_daemon import OWN, PEER, SLOW_S, config_text, mac_str, stand_in_factory, udp_frame


def restart_lines(caplog):
    return [r.getMessage() for r in caplog.records if "needs a restart" in r.getMessage()]


def test_reload_names_the_keys_that_need_a_restart(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("beatd"), "propagate", True)
    caplog.set_level(logging.INFO, logger="beatd")
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg_path = tmp_path / "beatd.toml"
    text = config_text(store, sock, metrics="")
    cfg_path.write_text(text)
    sources = []
    d = Daemon(bconfig.load(cfg_path), config_path=str(cfg_path),
               source_factory=stand_in_factory(sources))
    d.start()
    main = threading.Thread(target=d.serve, kwargs={"tick_s": 0.02})
    main.start()
    try:
        # unchanged: nothing applied, nothing to restart, not a word about a restart
        caplog.clear()
        assert d.reload() == {"applied": [], "restart": [], "error": None}
        assert restart_lines(caplog) == []

        # restart-only keys changed (capture geometry, commit interval, sync, segment size, join
        # window, [interrogation]) and a reloadable one (the neighbours)
        changed = (config_text(store, sock, metrics="", node_mac_id=8)
                   .replace("[capture]\n", "[capture]\nframe_size = 4096\n")
                   .replace("commit_interval_ms = 20", "commit_interval_ms = 40")
                   .replace('map_size = "256MiB"', 'map_size = "256MiB"\nsync = "always"')
                   + "[governance]\nsegment_records = 512\njoin_window_ms = 20.0\n"
                   + "[interrogation]\nmax_records = 1000\n")
        cfg_path.write_text(changed)
        caplog.clear()
        result = d.reload()
        want = ["store.sync", "governance.segment_records", "governance.join_window_ms",
                "capture.frame_size", "daemon.commit_interval_ms", "interrogation.max_records"]
        assert sorted(result["restart"]) == sorted(want) and result["applied"] == ["neighbours"]
        assert result["error"] is None
        assert sorted(restart_lines(caplog)) == sorted(f"reload: {k} changed: needs a restart"
                                                        for k in want)
        line = next(r for r in caplog.records
                    if r.getMessage() == "reload: capture.frame_size changed: needs a restart")
        assert line.levelno == logging.WARNING
        assert line.fields == {"key": "capture.frame_size", "running": 2048, "new": 4096}
        # the reloadable key applied: frames after the reload carry the new neighbour id
        st = request(str(sock), timeout=SLOW_S)
        assert st["neighbours"] == {mac_str(PEER): 8}
        assert st["last_reload"] == result
        sources[0].push([udp_frame(PEER, OWN, i, 1) for i in range(5)])
        wait_for(lambda: d.pipeline.totals()["frames"] == 5, timeout=SLOW_S, what="5 frames")
        # the running configuration took the neighbours only: the rest still needs a restart
        assert d.cfg.frame_size == 2048 and d.cfg.neighbours[0].node_id == 8
        caplog.clear()
        again = d.reload()
        assert again["applied"] == [] and sorted(again["restart"]) == sorted(want)
        assert len(restart_lines(caplog)) == len(want)

        # back to the running values: nothing needs a restart any more, nothing said
        cfg_path.write_text(config_text(store, sock, metrics="", node_mac_id=8))
        caplog.clear()
        assert d.reload() == {"applied": [], "restart": [], "error": None}
        assert restart_lines(caplog) == []
    finally:
        d.request_stop()
        main.join(timeout=SLOW_S)
        d.shutdown()
    assert d.failure is None


def test_a_rejected_configuration_changes_nothing(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("beatd"), "propagate", True)
    caplog.set_level(logging.INFO, logger="beatd")
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(store, sock, metrics=""))
    d = Daemon(bconfig.load(cfg_path), config_path=str(cfg_path),
               source_factory=stand_in_factory([]))
    d.start()
    try:
        cfg_path.write_text(config_text(store, sock, metrics="", node_mac_id=8)
                            .replace("[capture]\n", "[capture]\nframe_size = 128\n"))
        result = d.reload()
        assert result["applied"] == [] and result["restart"] == []
        assert "capture.frame_size: 128" in result["error"]
        assert d.neighbours.current() == {PEER: 7}
    finally:
        d.shutdown()


def test_a_reload_never_makes_the_device_its_own_neighbour(tmp_path):
    """A new file whose node_id changed (needs a restart) and whose neighbours name the running
    node_id, or a neighbour MAC that is one of own_macs: the device would record itself as prev/next
    hop, records that convict it. Refused, the neighbours unchanged."""
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(store, sock, metrics=""))
    d = Daemon(bconfig.load(cfg_path), config_path=str(cfg_path),
               source_factory=stand_in_factory([]))
    d.start()
    try:
        # node_id 1 -> 9 (valid on its own: the neighbour 1 is not the new file's node_id)
        cfg_path.write_text(config_text(store, sock, metrics="", node_mac_id=1)
                            .replace("node_id = 1\n", "node_id = 9\n", 1))
        result = d.reload()
        assert result["applied"] == [] and "neighbours[0].node_id: 1 is this device's own" \
            in result["error"]
        assert d.neighbours.current() == {PEER: 7}
        # at load the same mistake is refused outright
        with pytest.raises(bconfig.ConfigError, match=r"neighbours\[0\]\.node_id: 1 is this"):
            bconfig.from_dict({"node_id": 1, "neighbours": [{"node_id": 1, "mac": mac_str(PEER)}]})
        with pytest.raises(bconfig.ConfigError, match=r"neighbours\[0\]\.mac: .* one of own_macs"):
            bconfig.from_dict({"node_id": 1, "own_macs": [mac_str(OWN)],
                               "neighbours": [{"node_id": 2, "mac": mac_str(OWN)}]})
    finally:
        d.shutdown()


@pytest.mark.parametrize("field,key", sorted(bconfig.TOML_KEYS.items()))
def test_every_key_is_compared(field, key):
    """A change of any key is seen by its TOML name: applied by a reload, or reported as needing
    a restart; none is silently ignored."""
    running = bconfig.from_dict({"node_id": 1})
    new = dataclasses.replace(running, **{field: object()})
    plan = bconfig.reload_plan(running, new)
    assert plan == (bconfig.ReloadPlan(apply=(key,)) if key in bconfig.RELOADABLE_KEYS
                    else bconfig.ReloadPlan(restart=(key,)))
    table, _, name = key.rpartition(".")
    assert name in (bconfig.DEFAULTS[table] if table else bconfig.DEFAULTS)
