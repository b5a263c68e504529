"""At stop, beatd reads what its capture rings still hold: a packet that reached the router before
the stop is recorded. The kernel hands a TPACKET_V3 block over only when it is full or its block
timeout passes, so frames that arrived just before SIGTERM may still sit in an open block when the
capture loop sees the stop; the stand-in below holds its frames back exactly like that (until the
stop, then for a block timeout)."""
import threading
import time

from beatd import config as bconfig
from beatd.daemon import Daemon
from conftest import wait_for
from test_daemon import OWN, PEER, StandIn, config_text, counters_of, udp_frame


class HeldUntilStop(StandIn):
    """A source whose pushed frames become readable only ``hold_s`` after the capture stop, and
    only to a read that starts after the stop: the block still open when the capture loop's last
    read returned (it fed the blocks that were ready then). Until then reads time out."""

    def __init__(self, ifname, stop_event, hold_s):
        super().__init__(ifname)
        self.stop_event = stop_event
        self.hold_s = hold_s
        self.stop_seen = None
        self.reads_after_stop = 0

    def read(self, pipeline, timeout_ms=100):
        end = time.monotonic() + timeout_ms / 1000
        started_after_stop = self.stop_event.is_set()
        while True:
            if self.stop_event.is_set() and not started_after_stop:
                return 0                   # the loop's last read: it returns, the block is open
            if started_after_stop:
                self.reads_after_stop += 1
                if self.stop_seen is None:
                    self.stop_seen = time.monotonic()
                if time.monotonic() >= self.stop_seen + self.hold_s:
                    return super().read(pipeline, timeout_ms)
            if time.monotonic() >= end:
                return 0
            time.sleep(0.001)


def test_frames_still_in_the_ring_at_stop_are_recorded(tmp_path):
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(store, sock))
    cfg = bconfig.load(cfg_path)
    sources = []
    holder = {}

    def factory(interfaces, worker, group, config):
        s = HeldUntilStop(interfaces[0], holder["stop"], hold_s=cfg.block_timeout_ms / 1000)
        sources.append(s)
        return [s]

    d = Daemon(cfg, config_path=str(cfg_path), source_factory=factory)
    holder["stop"] = d._capture_stop
    d.start()
    main = threading.Thread(target=d.serve, kwargs={"tick_s": 0.02})
    main.start()
    n = 30
    sources[0].push([udp_frame(PEER, OWN, i, 1) for i in range(n)])
    time.sleep(0.3)
    assert d.pipeline.totals()["frames"] == 0          # held: not readable before the stop
    d.request_stop()
    main.join(timeout=30)
    d.shutdown()
    assert d.failure is None
    assert sources[0].reads_after_stop >= 1
    wait_for(lambda: sources[0].frames == n, timeout=1, what="frames read at stop")
    counters, records, problems = counters_of(store)
    assert problems == []
    assert len(records) == n
    assert sum(v[0] for v in counters.values()) == n
