"""The evidence archive and ``beatctl verify-decision`` (governance/archive.py), end to end on a
loopback domain (tests/governance/loopback_domain.py: real stores, anchors on a real local ledger,
real Interrogation servers over mutual TLS): the paper's topology, r1 sending the flow via r4.

- ``beatctl interrogate --evidence DIR`` keeps every signed chunk; the evidence digest recorded on
  the ledger is the archive's, and the verdict digest binds it;
- ``beatctl verify-decision`` re-checks every signature against the ledger's keys and every
  answer against the anchors, judges again and finds the recorded decision: exit 0;
- it exits 3 for a decision the archive does not give (another verdict recorded with the same
  evidence digest), for an archive that is not the one the decision committed to, and for an
  archive forged by whoever recorded it (a chunk changed and the digests made to agree: its
  signature no longer verifies, the verdicts differ); a changed file with the old digests is
  refused as bad input (exit 2).
"""
import json
import os
import shutil

import pytest

from fastpath.hashes import constructor
from governance import archive
from loopback_domain import Domain, files

LINKS = [(1, 2), (2, 3), (1, 4), (4, 3)]


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    d = Domain(tmp_path_factory.mktemp("domain"), LINKS)
    d.honest = d.send((1, 2, 3), 60, tag=1)
    d.detour = d.send((1, 4, 3), 60, tag=2)
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def decided(domain, tmp_path_factory):
    out = tmp_path_factory.mktemp("decided")
    lo, hi = domain.detour
    ev = out / "evidence"
    code, stdout, stderr = domain.interrogate(lo, hi, "--evidence", ev, "--json",
                                              out / "report.json")
    assert code == 3, stderr
    report = json.loads((out / "report.json").read_text())
    return ev, report, stdout


def test_the_archive_holds_every_signed_chunk(domain, decided):
    ev, report, stdout = decided
    verdicts = {d["node_id"]: d["verdict"] for d in report["devices"]}
    assert verdicts == {1: "DEVIATED", 2: "CONSISTENT", 3: "CONSISTENT", 4: "CONSISTENT"}
    arch = archive.read(ev)
    assert arch.digest.hex() == report["evidence_digest"] == report["decision"]["evidence_digest"]
    m = arch.manifest
    assert m["links"] == [[1, 2], [1, 4], [2, 3], [3, 4]]
    assert m["owners"] == {str(n): f"operator-{n}" for n in (1, 2, 3, 4)}
    for n in (1, 2, 3, 4):
        rpcs = [a["request"]["rpc"] for a in m["devices"][str(n)]["answers"]]
        assert rpcs[0] == "GetProofSegments" and rpcs[-2:] == ["GetReceipts", "GetCounterReport"]
        assert m["devices"][str(n)]["status"] == "answered"
    assert "manifest.json" in files(ev) and len(files(ev)) > 8
    with domain.ledger() as led:
        d = led.get_dispute(report["decision"]["dispute_id"])
    assert d.evidence_digest == arch.digest and list(d.faulty) == [1]


def test_verify_decision_finds_the_recorded_decision(domain, decided):
    ev, report, _ = decided
    code, out, err = domain.beatctl("verify-decision", report["decision"]["dispute_id"],
                                    "--evidence", ev, key=False)
    assert code == 0, out + err
    assert "the decision is what the archived evidence gives" in out
    assert "node 1 DEVIATED" in out


def test_another_verdict_on_the_same_evidence_is_found_different(domain, decided):
    """A governance that records a verdict the evidence does not give (r2 faulty) under the
    archive's own evidence digest: verify-decision recomputes the verdict and disagrees."""
    ev, report, _ = decided
    arch = archive.read(ev)
    with domain.ledger() as led:
        did = led.open_dispute(1, *report["window"].values(), signer=domain.gov)
        led.record_evidence(did, arch.digest, signer=domain.gov)
        led.decide(did, bytes(32), (2,), signer=domain.gov)
    code, out, _ = domain.beatctl("verify-decision", did, "--evidence", ev, "--json", key=False)
    assert code == 3
    doc = json.loads(out)
    assert set(doc["differ"]) == {"verdict_digest", "faulty"}
    assert doc["recomputed"]["faulty"] == [1] and doc["ledger"]["faulty"] == [2]


def test_an_archive_that_is_not_the_decisions(domain, decided, tmp_path):
    """The honest minute's archive against the detour minute's decision."""
    _, report, _ = decided
    lo, hi = domain.honest
    code, _, err = domain.interrogate(lo, hi, "--evidence", tmp_path / "other", "--no-record")
    assert code == 0, err
    code, out, _ = domain.beatctl("verify-decision", report["decision"]["dispute_id"],
                                  "--evidence", tmp_path / "other", "--json", key=False)
    assert code == 3
    assert {"window", "evidence_digest", "verdict_digest"} <= set(json.loads(out)["differ"])


def test_a_changed_chunk(domain, decided, tmp_path):
    """One byte of r1's first answer changed. With the manifest's digests left as they were the
    archive is refused (exit 2); with the digests made to agree and that archive's digest
    recorded with the original verdict (a forging governance), the signature no longer verifies:
    r1's answer is not evidence against r1 (the recorder could have changed it: not judged, never
    MISSING), the verdicts differ (exit 3)."""
    ev, report, _ = decided
    forged = tmp_path / "forged"
    shutil.copytree(ev, forged)
    m = json.loads((forged / "manifest.json").read_text())
    a = m["devices"]["1"]["answers"][0]
    path = forged / a["file"]
    blob = bytearray(path.read_bytes())
    blob[200] ^= 0x01
    path.write_bytes(bytes(blob))
    code, _, err = domain.beatctl("verify-decision", report["decision"]["dispute_id"],
                                  "--evidence", forged, key=False)
    assert code == 2 and "digest" in err
    a["digest"] = constructor(m["hash"])(bytes(blob)).hexdigest()
    (forged / "manifest.json").write_bytes(archive._canonical(m) + b"\n")
    arch = archive.read(forged)
    with domain.ledger() as led:
        did = led.open_dispute(1, *report["window"].values(), signer=domain.gov)
        led.record_evidence(did, arch.digest, signer=domain.gov)
        led.decide(did, bytes.fromhex(report["decision"]["verdict_digest"]), (1,),
                   signer=domain.gov)
    code, out, _ = domain.beatctl("verify-decision", did, "--evidence", forged, "--json",
                                  key=False)
    assert code == 3
    doc = json.loads(out)
    assert "verdict_digest" in doc["differ"] and doc["verdicts"]["1"] == "UNREACHABLE"
    assert doc["recomputed"]["faulty"] == []


def test_a_member_cannot_frame_a_device_by_damaging_its_archived_answer(domain, decided,
                                                                         tmp_path):
    """A dishonest member's archive: honest r2's answer cut short (its last chunk dropped) or a
    byte of a chunk flipped, the manifest's digests made to agree, and the decision that archive
    gives recorded. Every member judging it again finds r2 not judged (the archive cannot tell
    who damaged the answer), never at fault; r1's own signed evidence still names it."""
    ev, report, _ = decided
    for how in ("cut", "flip"):
        forged = tmp_path / how
        shutil.copytree(ev, forged)
        m = json.loads((forged / "manifest.json").read_text())
        a = m["devices"]["2"]["answers"][0]
        path = forged / a["file"]
        chunks = archive._split(path.read_bytes(), a["file"], a["chunks"])
        if how == "cut":
            chunks = chunks[:-1]
        else:
            chunks[0] = archive._Chunk(chunks[0].body[:-1] + bytes([chunks[0].body[-1] ^ 1]),
                                       chunks[0].signature)
        blob = b"".join(len(c.body).to_bytes(4, "big") + c.body + c.signature for c in chunks)
        path.write_bytes(blob)
        a["chunks"] = len(chunks)
        a["digest"] = constructor(m["hash"])(blob).hexdigest()
        (forged / "manifest.json").write_bytes(archive._canonical(m) + b"\n")
        code, out, err = domain.beatctl("verify-decision", report["decision"]["dispute_id"],
                                        "--evidence", forged, "--json", key=False)
        assert code == 3, err
        doc = json.loads(out)
        assert doc["verdicts"]["2"] == "UNREACHABLE" and doc["verdicts"]["1"] == "DEVIATED", doc
        assert 2 not in doc["recomputed"]["faulty"]


def test_the_archive_directory_must_be_new(domain, decided):
    ev, _, _ = decided
    lo, hi = domain.detour
    code, _, err = domain.interrogate(lo, hi, "--evidence", ev, "--no-record")
    assert code == 2 and "exists and is not empty" in err
    assert os.path.isfile(os.path.join(ev, "manifest.json"))


def test_an_archive_whose_owners_are_not_the_ledgers_is_refused(domain, decided, tmp_path):
    """The owners an archive is judged with are the ledger's: a recorder that joins honest r2 to
    r1's owner (so that one lying owner explains what two would) has its archive refused as bad
    input (exit 2), naming the node and both owners."""
    ev, report, _ = decided
    forged = tmp_path / "owners"
    shutil.copytree(ev, forged)
    m = json.loads((forged / "manifest.json").read_text())
    m["owners"]["2"] = m["owners"]["1"]
    (forged / "manifest.json").write_bytes(archive._canonical(m) + b"\n")
    code, out, err = domain.beatctl("verify-decision", report["decision"]["dispute_id"],
                                    "--evidence", forged, key=False)
    assert code == 2, out + err
    assert "node 2 is owned by 'operator-1', the ledger 'operator-2'" in err
