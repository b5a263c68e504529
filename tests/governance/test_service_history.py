"""The governance service's history (governance/service/history.py): the per-epoch series and
counted receipts in LMDB beside ``state.json``, written by ``State.save`` before the file."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from governance.service.history import History, path_in
from governance.service.state import State, read

L = 10**9


def _result(e, result="ok", n=10):
    return {"epoch_ns": e, "result": result, "ingress": n, "egress": n, "loss_ppm": 0}


def test_series_in_epoch_order_the_last_n_and_only_the_slas_own(tmp_path):
    h = History(str(tmp_path / "h.mdb"), keep_epochs=100)
    try:
        # written out of order, two SLAs whose keys neighbour each other
        h.write([(2, _result(e * L)) for e in (7, 5, 6)] + [(1, _result(9 * L, "violation"))] +
                [(3, _result(1 * L))], [])
        assert [d["epoch_ns"] for d in h.series(2)] == [5 * L, 6 * L, 7 * L]
        assert [d["epoch_ns"] for d in h.series(2, limit=2)] == [6 * L, 7 * L]
        assert [d["result"] for d in h.series(1)] == ["violation"]
        assert h.series(3, limit=5) == [_result(1 * L)]           # the last SLA of the file
        assert h.series(4) == [] and h.series(4, limit=3) == []
    finally:
        h.close()


def test_old_records_are_pruned_per_sla_and_node(tmp_path):
    h = History(str(tmp_path / "h.mdb"), keep_epochs=3)
    try:
        for e in range(1, 11):
            h.write([(1, _result(e * L))], [(1, 4, 1, e * L, "aa" * 32),
                                            (1, 9, 2, e * L, "bb" * 32)])
        h.write([(2, _result(2 * L))], [])                  # another SLA's own clock
        assert [d["epoch_ns"] for d in h.series(1)] == [8 * L, 9 * L, 10 * L]
        assert h.counted(1) == {"4": {f"1:{e * L}": "aa" * 32 for e in (8, 9, 10)},
                                "9": {f"2:{e * L}": "bb" * 32 for e in (8, 9, 10)}}
        assert [d["epoch_ns"] for d in h.series(2)] == [2 * L]
    finally:
        h.close()


def test_a_full_map_grows_instead_of_failing(tmp_path):
    h = History(str(tmp_path / "h.mdb"), keep_epochs=10**6, map_size=64 << 10)
    try:
        for i in range(40):        # ~40 x 100 records of ~120 bytes: far beyond 64 KiB
            h.write([(s, _result((i + 1) * L)) for s in range(100)], [])
        assert len(h.series(5)) == 40
        assert h.env.info()["map_size"] > 64 << 10
    finally:
        h.close()


def test_a_state_records_saves_and_reads_back_what_it_has_not_saved_yet(tmp_path):
    st = State(str(tmp_path / "s"))
    st.keep(600, L)
    st.sla(1)["next_epoch"] = 6 * L
    st.record(1, _result(5 * L), [(3, 2, 5 * L, "cc" * 32)])
    # before the save: the readers see it, the files do not
    assert st.series(1) == [_result(5 * L)] and st.counted(1) == {"3": {f"2:{5 * L}": "cc" * 32}}
    assert History(path_in(str(tmp_path / "s"))).series(1) == []
    st.save()
    again = State(str(tmp_path / "s"))                     # a second State in the process
    assert again.series(1) == [_result(5 * L)]
    assert again.counted(1) == {"3": {f"2:{5 * L}": "cc" * 32}}
    again.close()
    assert st.series(1) == [_result(5 * L)]                # the first still reads its file
    snap = st.snapshot(series=True)
    assert snap["slas"]["1"]["series"] == [_result(5 * L)]
    assert snap["counted"] == {"1": {"3": {f"2:{5 * L}": "cc" * 32}}}
    assert "series" not in st.snapshot()["slas"]["1"]      # the API's copy: the state only
    text = (tmp_path / "s" / "state.json").read_text()
    assert "series" not in text and "cc" * 32 not in text  # not in the file written whole
    st.close()


def test_an_epoch_recorded_again_after_a_crash_is_one_epoch(tmp_path):
    """A crash between the history's write and the file's: the epochs are evaluated again after
    the restart and recorded under the same keys, once."""
    st = State(str(tmp_path / "s"))
    st.sla(1)["next_epoch"] = 5 * L
    st.save()
    st.record(1, _result(5 * L, n=10))
    st.history.write(st._results, st._counted)             # the history written ...
    st._results = []
    st.close()                                             # ... and the process gone
    again = State(str(tmp_path / "s"))
    assert again.sla(1)["next_epoch"] == 5 * L             # the file: not evaluated
    again.record(1, _result(5 * L, n=11))                  # evaluated again
    again.save()
    assert again.series(1) == [_result(5 * L, n=11)]
    again.close()


def test_a_state_from_before_the_history_moves_into_it(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    old = {"format": "beat-governance-service-state-v1", "started": 3, "disputes": {},
           "slas": {"7": {"next_epoch": 3 * L, "streak": [], "series": [_result(1 * L),
                                                                         _result(2 * L)]}},
           "counted": {"7": {"4": {f"1:{2 * L}": "dd" * 32}}}}
    (d / "state.json").write_text(json.dumps(old))
    st = State(str(d))
    assert [r["epoch_ns"] for r in st.series(7)] == [1 * L, 2 * L]
    assert st.counted(7) == {"4": {f"1:{2 * L}": "dd" * 32}}
    st.save()
    st.close()
    data = json.loads((d / "state.json").read_text())
    assert "counted" not in data and "series" not in data["slas"]["7"]
    assert data["slas"]["7"]["next_epoch"] == 3 * L and data["started"] == 4
    assert data["slas"]["7"]["last_loss_ppm"] == 0          # the metrics' last loss kept
    got = read(str(d))
    assert [r["epoch_ns"] for r in got["slas"]["7"]["series"]] == [1 * L, 2 * L]
    assert got["counted"] == {"7": {"4": {f"1:{2 * L}": "dd" * 32}}}


def test_another_process_reads_the_state_while_the_service_holds_it(tmp_path):
    st = State(str(tmp_path / "s"))
    st.sla(2)["next_epoch"] = 4 * L
    st.record(2, _result(3 * L, "violation"))
    st.save()
    code = ("import json, sys; from governance.service.state import read; "
            "print(json.dumps(read(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                         timeout=60, check=True)
    got = json.loads(out.stdout)
    assert got["slas"]["2"]["series"] == [_result(3 * L, "violation")]
    st.record(2, _result(4 * L))                           # the holder goes on writing
    st.save()
    assert [r["epoch_ns"] for r in st.series(2)] == [3 * L, 4 * L]
    st.close()
    assert read(str(tmp_path / "nothing")) is None


def test_a_history_that_is_not_lmdb_is_refused_with_its_path(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "history.mdb").write_bytes(b"not an lmdb file at all" * 100)
    with pytest.raises(ValueError, match="history.mdb: the service's history cannot be opened"):
        State(str(d))


def test_the_api_lists_the_last_epochs_and_a_tenant_reads_only_its_own(tmp_path):
    """/api/v1/slas: each SLA's last LIST_SERIES_EPOCHS epochs (the whole series of 1,000 SLAs
    is ~100 MB of JSON every page refresh); a tenant's request reads its own SLAs' series only."""
    from types import SimpleNamespace

    from governance.service import access
    from governance.service.api import LIST_SERIES_EPOCHS, App
    from ledger_client.types import SLA

    st = State(str(tmp_path / "s"))
    st.keep(600, L)
    for sla in (1, 2):
        for e in range(1, LIST_SERIES_EPOCHS + 31):
            st.record(sla, _result(e * L))
    st.save()
    slas = {i: SLA(i, f"t{i}", bytes(16), bytes(15) + bytes([i]), (1, 2)) for i in (1, 2)}
    reads = []
    real = st.series
    st.series = lambda sid, limit=None: reads.append(int(sid)) or real(sid, limit)
    svc = SimpleNamespace(state=st, svc=SimpleNamespace(series_epochs=600, epoch_ns=L,
                                                        consecutive=3),
                          watcher=SimpleNamespace(view=SimpleNamespace(slas=slas)),
                          counters=SimpleNamespace(lock=__import__("threading").Lock(),
                                                   api_refused=0))

    def get(app, path):
        out = {}
        body = app({"REQUEST_METHOD": "GET", "PATH_INFO": path.split("?")[0],
                    "QUERY_STRING": path.partition("?")[2]},
                   lambda status, headers: out.setdefault("status", status))
        return out["status"], json.loads(b"".join(body))

    app = App(svc, http=None)
    status, got = get(app, "/api/v1/slas")
    assert status.startswith("200")
    assert [len(s["series"]) for s in got] == [LIST_SERIES_EPOCHS] * 2
    assert got[0]["series"][-1]["epoch_ns"] == (LIST_SERIES_EPOCHS + 30) * L
    assert len(get(app, "/api/v1/slas/2")[1]["series"]) == LIST_SERIES_EPOCHS + 30
    # a tenant: its SLA's series read, the other's not even read
    tenant = App(svc, http=SimpleNamespace(clients=[]))
    reads.clear()
    import governance.service.access as acc
    real_identify = acc.identify
    acc.identify = lambda cfg, der: access.Client("t2's client", "t2")
    try:
        status, got = get(tenant, "/api/v1/slas")
    finally:
        acc.identify = real_identify
    assert [s["sla_id"] for s in got] == [2] and reads == [2]
    st.close()


def test_counted_receipts_of_unfinished_windows_outlive_the_series_and_no_longer(tmp_path):
    """Spared from pruning: the counted receipts of a dispute not filed yet, of a queued and of
    an undisputed window; once the dispute is filed, they go with the next write."""
    st = State(str(tmp_path / "s"))
    st.keep(5, L)
    st.sla(1)["queued"] = {"from_ns": 3 * L, "to_ns": 3 * L + L - 1}
    st.sla(1)["undisputed"] = [[6 * L + 1, 6 * L + 2]]            # inside epoch 6
    st.data["disputes"]["1:1:2"] = {"sla_id": 1, "from_ns": 1 * L + 5, "to_ns": 2 * L - 1,
                                    "state": "undecided"}
    st.data["disputes"]["1:9:9"] = {"sla_id": 1, "from_ns": 9 * L, "to_ns": 9 * L,
                                    "state": "filed"}
    for e in range(1, 31):
        st.record(1, _result(e * L), [(4, 2, e * L, "ee" * 32)])
        st.save()
    kept = sorted(int(k.split(":")[1]) // L for k in st.counted(1)["4"])
    # epochs 1 (the dispute's window starts in it), 3 (queued), 6 (undisputed), the last 5
    assert kept == [1, 3, 6, 26, 27, 28, 29, 30]
    assert [d["epoch_ns"] // L for d in st.series(1)] == [26, 27, 28, 29, 30]  # series: 5
    st.data["disputes"]["1:1:2"]["state"] = "filed"
    st.sla(1)["queued"] = None
    st.sla(1)["undisputed"] = []
    st.record(1, _result(31 * L), [(4, 2, 31 * L, "ee" * 32)])
    st.save()
    assert sorted(int(k.split(":")[1]) // L for k in st.counted(1)["4"]) == [27, 28, 29, 30, 31]
    st.close()
