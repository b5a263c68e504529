"""Failures as typed values (beatd.failures): what stopped the daemon, what holds now (the store
full, the ledger down or refusing), in ``beatd status``, the metrics and the anchor status."""
import types
import urllib.request

from beatd import config as bconfig
from beatd.anchoring import Anchoring
from beatd.daemon import Daemon
from beatd.failures import Failure, Kind

from test_daemon import StandIn, config_text


def test_failure_values():
    f = Failure.of(Kind.CAPTURE, "capture worker 0", OSError(5, "device gone"))
    assert str(f) == "capture worker 0: [Errno 5] device gone" and f.fatal
    assert f.as_dict()["kind"] == "capture" and f.as_dict()["exc_type"] == "OSError"
    assert f.since is not None
    assert Kind.STORE.fatal and not any(k.fatal for k in (Kind.STORE_FULL, Kind.LEDGER_DOWN,
                                                          Kind.LEDGER_REFUSED, Kind.ANCHOR))
    assert str(Failure(Kind.LEDGER_DOWN, "ledger", "unreachable")) == "ledger: unreachable"


def test_a_worker_failure_is_a_capture_failure_in_status_and_metrics(tmp_path):
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(tmp_path / "store", "", metrics="127.0.0.1:0"))
    cfg = bconfig.load(cfg_path)

    class Broken(StandIn):
        def read(self, pipeline, timeout_ms=100):
            raise OSError(5, "stand-in: device gone")

    d = Daemon(cfg, source_factory=lambda interfaces, *a: [Broken(interfaces[0])])
    d.start()
    try:
        d.serve(tick_s=0.02)            # returns on its own: the worker failed
        assert d.fault.kind is Kind.CAPTURE and d.fault.where == "capture worker 0"
        assert d.failure == "capture worker 0: [Errno 5] stand-in: device gone"
        st = d.status()
        assert st["failure"] == d.failure
        assert [f["kind"] for f in st["failures"]] == ["capture"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics.port}/metrics",
                                      timeout=30).read().decode()
        assert 'beat_failure{kind="capture"} 1.0' in text
        assert 'beat_failure{kind="store_full"} 0.0' in text
    finally:
        d.shutdown()


class FakeBatcher:
    def __init__(self):
        self.halted = None
        self.st = {"failures": 0, "last_error": None, "next_batch_seq": 0, "pending_anchors": 0,
                   "leaves_waiting": 0}
        self.resumed = 0

    def stats(self):
        return dict(self.st)

    def tick(self):
        pass

    def resume(self):
        self.resumed += 1
        self.halted = None


def test_anchoring_failure_kinds():
    cfg = types.SimpleNamespace(ledger_backend="local", effective_ledger_anchor_period_s=10.0,
                                store_path="/nowhere")
    b = FakeBatcher()
    a = Anchoring(b, cfg, where="/nowhere/ledger.lmdb")
    assert a.failure() is None and a.status()["failure"] is None
    b.st.update(failures=2, last_error="anchor 1/0: Unavailable: unreachable")
    a.tick()
    f = a.failure()
    assert f.kind is Kind.LEDGER_DOWN and "unreachable" in f.error
    assert a.status()["failure"]["kind"] == "ledger_down"
    b.halted = "anchor 1/0: PermissionDenied: NotNodeAccount"
    assert a.failure().kind is Kind.LEDGER_REFUSED
    a.resume()
    assert b.resumed == 1 and b.halted is None
    b.st.update(failures=0)
    b.tick = lambda: (_ for _ in ()).throw(RuntimeError("boom"))
    b.failed = lambda where, exc: f"{where}: {type(exc).__name__}: {exc}"
    a.tick()
    assert a.failure().kind is Kind.ANCHOR and a.failure().error == "boom"
