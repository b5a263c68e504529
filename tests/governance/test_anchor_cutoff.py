"""When an anchor counts for a dispute (docs/interrogation.md, "When an anchor counts"): the
anchors the ledger took by the interrogation's cutoff ``anchors_until_ns`` (the governance's clock
once every answer is in, plus the skew), recorded in the archive; the judgement is the archive's
replay, made once the ledger is settled past the cutoff. So every member judging the archive, now
or later, sees the same anchors and gets the same verdict digest.

The domain (tests/governance/loopback_domain.py: real stores, a real local ledger, real
Interrogation servers over mutual TLS): r2 answers with inclusion proofs of batches that reach
the ledger only after the interrogation (a liar anchoring late, or a device counting fewer
confirmations than the governance). Without the cutoff, a member judging the same archive after
they landed would count them and dissent (the old behaviour, shown by the same archive with its
cutoff removed).
"""
import copy
import json
import types

import pytest

from governance import archive, report, verify
from governance import interrogate as itg
from loopback_domain import Domain

LINKS = [(1, 2), (2, 3), (1, 4), (4, 3)]


@pytest.fixture(scope="module")
def late(tmp_path_factory):
    """r2's anchors land after the interrogation: ``(domain, Interrogation, verdict digest)``
    of the interrogation made before they landed; they have landed when it returns."""
    d = Domain(tmp_path_factory.mktemp("late"), LINKS)
    lo, hi = d.send((1, 2, 3), 60, tag=1)
    d.start(hold={2})
    cfg = itg.load_config(str(d.config))
    with d.ledger() as led:
        assert led.next_batch_seq(2) == 0              # nothing of r2 on the ledger yet
        it = itg.interrogate(led, 1, lo, hi, cfg)
    vd = itg.verdict_digest(it.judgement, it.evidence_digest)
    d.release()
    with d.ledger() as led:
        assert led.next_batch_seq(2) >= 1              # now they are
    yield d, it, vd
    d.stop()


def test_the_archive_records_the_cutoff(late):
    _, it, _ = late
    p = it.manifest["params"]
    assert p["asked_at_ns"] < p["anchors_until_ns"]
    assert p["anchors_until_ns"] - p["asked_at_ns"] < 30 * 10**9
    ev = it.evidence[2]
    assert ev.status == "answered" and ev.unanchored >= 1 and not ev.records


def test_a_late_anchor_does_not_change_the_verdict(late):
    d, it, vd = late
    arch = archive.from_blobs(it.manifest, it.blobs)
    with d.ledger() as led:
        j, ev = itg.replay(arch, led)
        # the replay sees r2's anchors on the ledger, taken after the cutoff: left out
        assert ev[2].unanchored == it.evidence[2].unanchored >= 1
        assert itg.verdict_digest(j, arch.digest) == vd
        assert report.evidence_digest(j) == report.evidence_digest(it.judgement)
        # the premise: the same archive with a cutoff after they landed counts them (as every
        # judgement did before there was a cutoff)
        m = copy.deepcopy(it.manifest)
        m["params"]["anchors_until_ns"] = led.settled_ns()
        j0, ev0 = itg.replay(archive.from_blobs(m, it.blobs), led)
        assert ev0[2].unanchored == 0 and len(ev0[2].records) > 0
        assert report.evidence_digest(j0) != report.evidence_digest(it.judgement)
        # without a cutoff it is not judged at all
        del m["params"]["anchors_until_ns"]
        with pytest.raises(ValueError, match="no anchors_until_ns"):
            itg.replay(archive.from_blobs(m, it.blobs), led)


def test_a_late_anchor_is_named_as_late(late):
    d, it, _ = late
    until = it.manifest["params"]["anchors_until_ns"]
    with d.ledger() as led:
        anchors = verify.AnchorCache(led, until_ns=until)
        assert anchors.get(2, 0) is None
        landed = anchors.late[(2, 0)]
        assert landed > until and led.get_anchor(2, 0).ledger_t_ns == landed
        assert verify.AnchorCache(led).get(2, 0) is not None      # no cutoff: it counts
        ref = types.SimpleNamespace(batch_seq=0, tree_size=1, leaf_index=0, path=())
        problem = verify._check_anchor(2, "sha3-256", b"\x00" * 33, ref, anchors, "segment 0")
    assert problem.kind == verify.UNANCHORED
    assert f"landed on the ledger at {landed}, after this interrogation's cutoff {until}" in \
        problem.reason


def test_verify_decision_agrees_after_the_anchors_landed(tmp_path):
    """Through beatctl: interrogate (decided, k = 1), the late anchors land, verify-decision
    judges the archive again and finds the recorded decision."""
    d = Domain(tmp_path / "domain", LINKS)
    lo, hi = d.send((1, 2, 3), 40, tag=1)
    d.start(hold={2})
    try:
        ev = tmp_path / "evidence"
        code, out, err = d.interrogate(lo, hi, "--evidence", ev, "--json", tmp_path / "r.json")
        assert code == 0, err
        dispute = json.loads((tmp_path / "r.json").read_text())["decision"]["dispute_id"]
        d.release()
        code, out, err = d.beatctl("verify-decision", dispute, "--evidence", ev, key=False)
        assert code == 0, out + err
        assert "the decision is what the archived evidence gives" in out
    finally:
        d.stop()


@pytest.mark.parametrize("params, match", [
    ({"asked_at_ns": 2_000, "anchors_until_ns": 1_000}, "before asked_at_ns"),
    ({"asked_at_ns": 1_000, "anchors_until_ns": "1000"}, "not a time"),
    ({"asked_at_ns": 1_000, "anchors_until_ns": -1}, "not a time"),
    ({"asked_at_ns": 1_000, "anchors_until_ns": True}, "not a time"),
    ({"asked_at_ns": 1_000, "anchors_until_ns": 10**9 * 3600}, "ahead of this clock"),
])
def test_a_cutoff_that_cannot_be_is_refused(params, match):
    with pytest.raises(ValueError, match=match):
        itg.anchors_cutoff(params, now_ns=10**9)


def test_a_cutoff_is_taken_as_recorded():
    assert itg.anchors_cutoff({"asked_at_ns": 5, "anchors_until_ns": 7}, now_ns=10) == 7
    with pytest.raises(ValueError, match="no anchors_until_ns"):
        itg.anchors_cutoff({"asked_at_ns": 5}, now_ns=10)


def test_the_local_ledger_is_settled_past_what_it_took(late):
    d, _, _ = late
    with d.ledger() as led:
        a = led.get_anchor(2, 0)
        assert led.settled_ns() >= a.ledger_t_ns
        assert verify.wait_settled(led, a.ledger_t_ns, timeout_s=1) >= a.ledger_t_ns


def test_a_ledger_that_does_not_settle_is_not_judged():
    class Lagging:
        def settled_ns(self):
            return 1_000

    with pytest.raises(verify.NotSettled, match="not yet past the interrogation's cutoff 5000"):
        verify.wait_settled(Lagging(), 5_000, timeout_s=0.2)
