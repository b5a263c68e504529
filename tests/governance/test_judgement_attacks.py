"""The attacks issue 12 reproduced against the former judgement, on the paper's topology
(tests/governance/test_verdicts.py draws it), each judged by governance/verdicts.py and by the
brute-force reference of the rule (tests/governance/judge_reference.py): the liar named where the
guarantee says so (docs/threat-model.md), no honest device ever.

Owners: every router its own owner unless the test says otherwise; f = 1 unless it says otherwise.
"""
import pytest

from fastpath.output import NONE
from governance.verdicts import (AMBIGUOUS, CONSISTENT, DEVIATED, FABRICATED, MISSING,
                                 UNREACHABLE)
from judge_reference import reference
from test_verdicts import (DETOUR, GAP, HASH, HOP, N, ROUTE, T0, TOPO, WINDOW, Lab, judge,
                           receipts_of, sla)

HI = 1_050_000_000


def check(ev, *, owners=None, f=1, s=None):
    """The judgement and the reference agree; returns the judgement."""
    s = s or sla()
    j = judge(s, *WINDOW, ev, owners=owners, f=f)
    named, explained = reference(s, *WINDOW, ev, topology=TOPO, owners=owners or {}, f=f,
                                 hash_name=HASH, lo=-50_000_000, hi=HI)
    assert (set(j.faulty), j.explained) == (named, explained)
    return j


def verdicts(j):
    return {n: d.verdict for n, d in j.devices.items()}


# -- 1. one device frames an honest neighbour with records naming itself --------------------------

@pytest.mark.parametrize("anchored", [True, False], ids=["anchored", "unanchored"])
def test_self_reference_cannot_frame_a_neighbour(anchored):
    """r2 forwards to r3 but writes "from r1 to me" and "from me to outside" for each packet: a
    pair the former rules took as a confirmed hop and as the third device confirming that r3's
    prev_id 2 is false. Records naming their own device are what no truthful device writes:
    they convict r2 and accuse nobody."""
    lab = Lab()
    pds = lab.flow(ROUTE, hide=(2,))
    for i, pd in enumerate(pds):
        lab.add(2, T0 + i * GAP + HOP, 1, 2, pd)
        lab.add(2, T0 + i * GAP + HOP + 1000, 2, 0, pd)
    ev = lab.evidence()
    if not anchored:
        from governance.verdicts import NodeEvidence
        ev[2] = NodeEvidence(2, unanchored_records=ev[2].records)
    j = check(ev)
    assert verdicts(j) == {1: CONSISTENT, 2: FABRICATED, 3: CONSISTENT, 4: CONSISTENT}
    assert j.devices[2].basis == "own evidence"
    assert j.devices[2].counts["impossible_records"] == 2 * N


def test_naming_a_non_neighbour_convicts_the_signer():
    """r2 claims to have sent the flow to r4, which is not its registered neighbour."""
    lab = Lab()
    pds = lab.flow(ROUTE)
    lab.records[2] = [(t, p, 4, pd, ft) for t, p, q, pd, ft in lab.records[2]]
    j = check(lab.evidence())
    assert j.devices[2].verdict == FABRICATED
    assert {n for n in j.faulty} == {2}
    assert len(pds) == N


# -- 2. a route device hides the figure-5 reroute ---------------------------------------------------

def test_route_device_lying_about_its_next_hop_is_named():
    """r1 sends the flow to r4 (the cheaper path) and records next_id 2 anyway; r4 and r3 are
    honest. Only r1 lying explains r4's record "from r1": r1 FABRICATED, and DEVIATED applies."""
    lab = Lab()
    pds = lab.flow(DETOUR)
    lab.records[1] = [(t, p, 2, pd, ft) for t, p, q, pd, ft in lab.records[1]]
    j = check(lab.evidence())
    assert verdicts(j) == {1: FABRICATED, 2: CONSISTENT, 3: CONSISTENT, 4: CONSISTENT}
    assert j.devices[1].applies == (FABRICATED, DEVIATED)
    assert "every explanation with at most 1 lying owner" in j.devices[1].basis
    assert len(pds) == N


def test_route_device_withholding_the_reroute():
    """r1 sends via r4 and answers with no record of the flow. r4's word "from r1" against r1's
    silence is ambiguous ("r1; or r4"); but r1's own receipts (it is the first device: it keeps
    ingress receipts, anchored) count the packets its answer lacks: MISSING on its own evidence,
    and then only r1 lying explains r4's records: DEVIATED applies too."""
    lab = Lab()
    lab.flow(DETOUR)
    epoch = 50_000_000
    receipts = receipts_of(lab, 1, 1, epoch)
    lab.records[1] = []
    j = check(lab.evidence())
    assert verdicts(j) == {1: AMBIGUOUS, 2: CONSISTENT, 3: CONSISTENT, 4: AMBIGUOUS}
    ev = lab.evidence(extra={1: {"receipts": receipts}})
    s = sla()
    j = judge(s, *WINDOW, ev, receipt_epoch_ns=epoch)
    assert verdicts(j) == {1: MISSING, 2: CONSISTENT, 3: CONSISTENT, 4: CONSISTENT}
    assert j.devices[1].applies == (MISSING, DEVIATED)
    assert "receipts count" in j.devices[1].reasons[0]


def test_reroute_with_the_detour_unreachable_is_ambiguous():
    """r1 lies as above but r4 does not answer: r1's word (next 2) against r2's silence; nobody is
    named, both are listed."""
    lab = Lab()
    lab.flow(DETOUR)
    lab.records[1] = [(t, p, 2, pd, ft) for t, p, q, pd, ft in lab.records[1]]
    j = check(lab.evidence(no_answer={4: "UNAVAILABLE"}))
    assert verdicts(j) == {1: AMBIGUOUS, 2: AMBIGUOUS, 3: CONSISTENT, 4: UNREACHABLE}
    assert sorted(sorted(e.liars) for e in j.explanations) == [[1], [2]]


# -- 3. two colluders ---------------------------------------------------------------------------

def sandwich(lab):
    """r1 and r3 send the flow around r2 (via r4, honest) and claim it went through r2."""
    lab.flow(DETOUR)
    lab.records[1] = [(t, p, 2, pd, ft) for t, p, q, pd, ft in lab.records[1]]
    lab.records[3] = [(t, 2, q, pd, ft) for t, p, q, pd, ft in lab.records[3]]
    return lab.evidence()


@pytest.mark.parametrize("f", [1, 2])
def test_sandwich_by_two_owners_frames_nobody(f):
    j = check(sandwich(Lab()), f=f)
    assert j.faulty == []
    assert j.devices[2].verdict in (CONSISTENT, AMBIGUOUS)
    if f == 1:
        assert not j.explained and j.owners_needed == 2
        assert sorted(sorted(e.liars) for e in j.candidates) == [[1, 3], [2, 4]]
        assert any("at least 2 owners must be lying" in n for n in j.notes)
    else:
        assert j.explained


def test_sandwich_by_one_owner_names_both():
    """r1 and r3 belong to one operator: one adversary. Only it explains the evidence."""
    owners = {1: "acme", 3: "acme", 2: "beta", 4: "gamma"}
    j = check(sandwich(Lab()), owners=owners)
    assert set(j.faulty) == {1, 3}
    assert verdicts(j)[2] == CONSISTENT and verdicts(j)[4] == CONSISTENT


def figure7(lab):
    """Figure 7 with colluders: r1 sends via r4 and says next 2; r2 replicates the proofs."""
    pds = lab.flow(DETOUR)
    lab.records[1] = [(t, p, 2, pd, ft) for t, p, q, pd, ft in lab.records[1]]
    for i, pd in enumerate(pds):
        lab.add(2, T0 + i * GAP + HOP, 1, 3, pd)
    return lab.evidence()


@pytest.mark.parametrize("f", [1, 2])
def test_figure7_by_two_owners_never_names_the_honest_detour(f):
    j = check(figure7(Lab()), f=f)
    assert j.devices[4].verdict in (CONSISTENT, AMBIGUOUS)
    assert j.devices[3].verdict in (CONSISTENT, AMBIGUOUS)
    assert j.faulty == []


def test_figure7_by_one_owner_names_both():
    owners = {1: "acme", 2: "acme", 3: "beta", 4: "gamma"}
    j = check(figure7(Lab()), owners=owners)
    assert verdicts(j) == {1: FABRICATED, 2: FABRICATED, 3: CONSISTENT, 4: CONSISTENT}
    assert DEVIATED in j.devices[1].applies


# -- what no rule can tell apart -------------------------------------------------------------------

def test_drop_and_claim_forwarded_is_ambiguous():
    """r2 drops every packet and claims it sent them to r3. The same evidence comes from r3
    receiving them and hiding it: "r2; or r3", nobody named (docs/threat-model.md)."""
    lab = Lab()
    lab.flow(ROUTE, hide=(3,))
    j = check(lab.evidence())
    assert verdicts(j) == {1: CONSISTENT, 2: AMBIGUOUS, 3: AMBIGUOUS, 4: CONSISTENT}


def test_honest_drop_within_budget_and_declared_nowhere_else():
    """An honest drop recorded as such (next NONE) is the device's own word: within the budget it
    is CONSISTENT, and it never makes a neighbour suspect."""
    lab = Lab()
    lab.flow(ROUTE, drop_at=lambda i: 2 if i % 50 == 7 else None)
    j = check(lab.evidence(), s=sla(loss_budget_ppm=50_000))
    assert set(verdicts(j).values()) == {CONSISTENT}
    assert NONE not in {d.node_id for d in j.devices.values()}
