"""governance/report.py: the text table, the canonical JSON and its digest, the SVG picture, over
the judgements of the paper's scenarios (tests/governance/test_verdicts.py)."""
import hashlib
import json
import xml.etree.ElementTree as ET

import pytest

from governance import report
from governance.verdicts import FAULTS, VERDICTS
from test_verdicts import (WINDOW, Lab, deviated, deviated_and_dropped, dropped, fabricated,
                           hidden, honest, judge, no_answer, sla, silent_drop, tampered)

SCENARIOS = [honest, deviated, fabricated, dropped, tampered, no_answer, hidden]
NAMES = {1: "r1", 2: "r2", 3: "r3", 4: "r4"}
SVG = "{http://www.w3.org/2000/svg}"


def judged(scenario, **kw):
    ev, s, (lo, hi), expected = scenario(Lab())
    return judge(s, lo, hi, ev, **kw), expected


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_svg_well_formed_names_every_device_and_verdict(scenario):
    j, expected = judged(scenario)
    root = ET.fromstring(report.svg(j, NAMES))
    assert root.tag == SVG + "svg"
    text = " ".join("".join(el.itertext()) for el in root.iter(SVG + "text"))
    for node, verdict in expected.items():
        assert f"{NAMES[node]}: {verdict}" in text
    # every device drawn on a row is filled with its verdict's colour
    circles = root.findall(f".//{SVG}circle")
    labels = [el for el in root.iter(SVG + "text") if el.text in NAMES.values()]
    assert circles and len(circles) == len(labels)
    for circle, label in zip(circles, labels):
        node = next(n for n, name in NAMES.items() if name == label.text)
        assert circle.get("fill") == report.COLOURS[expected[node]]
    # the agreed route is drawn, and every observed path
    assert "agreed route" in text
    assert text.count("observed:") == len(j.paths)


def test_svg_edges_carry_packet_counts():
    j, _ = judged(deviated)
    text = [el.text for el in ET.fromstring(report.svg(j, NAMES)).iter(SVG + "text")]
    assert "observed: 200 packet(s)" in text
    assert text.count("200") == 4               # outside -> r1 -> r4 -> r3 -> outside


def test_svg_escapes_names_and_marks_unproven_nodes():
    j, _ = judged(hidden)
    names = {1: "<r1 & co>", 2: "r2", 3: "r3", 4: "r4"}
    root = ET.fromstring(report.svg(j, names))
    assert "<r1 & co>" in [el.text for el in root.iter(SVG + "text")]
    dashed = [c for c in root.iter(SVG + "circle") if c.get("stroke-dasharray")]
    assert len(dashed) == 1                      # r2 in the observed path: no record of its own
    assert "MISSING (no record)" in [el.text for el in root.iter(SVG + "text")]


def test_svg_lists_every_verdict_that_applies():
    j, _ = judged(deviated_and_dropped)
    root = ET.fromstring(report.svg(j, NAMES))
    text = ["".join(el.itertext()) for el in root.iter(SVG + "text")]
    assert any(t.startswith("r1: DEVIATED (") and t.endswith("; also DROPPED)") for t in text)


def test_svg_without_traffic():
    lab = Lab()
    lab.flow()
    j = judge(sla(), 0, 10, lab.evidence())
    root = ET.fromstring(report.svg(j))
    text = " ".join("".join(el.itertext()) for el in root.iter(SVG + "text"))
    assert "0 packet(s)" in text and "node 4: CONSISTENT" in text


# -- JSON -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_json_holds_every_verdict_with_its_evidence(scenario):
    j, expected = judged(scenario)
    doc = json.loads(report.to_json(j))
    d = doc["judgement"]
    assert d == report.to_dict(j)
    assert {x["node_id"]: x["verdict"] for x in d["devices"]} == expected
    assert d["window"] == {"from_ns": WINDOW[0], "to_ns": WINDOW[1]}
    assert d["sla"]["route"] == [1, 2, 3] and d["ft"] == j.ft.hex()
    assert sorted(d["faulty"]) == sorted(n for n, v in expected.items() if v in FAULTS)
    assert d["rule"]["f"] == 1 and d["rule"]["explained"]
    for x in d["devices"]:
        assert x["verdict"] in VERDICTS and x["owner"] == f"node {x['node_id']}"
        assert x["at_fault"] == (x["verdict"] in FAULTS)
        if x["at_fault"]:
            assert x["reasons"][0].startswith(x["verdict"]) and x["basis"]
        for kind, exs in x["examples"].items():
            for ex in exs:
                assert len(bytes.fromhex(ex["pd"])) == 16
                assert set(ex["records"][0]) == {"node_id", "t_ns", "prev_id", "next_id"}
    digest = hashlib.new("sha3_256", json.dumps(d, sort_keys=True, separators=(",", ":"))
                         .encode()).hexdigest()
    assert doc["digest"] == {"hash": "sha3-256", "evidence_digest": digest}
    assert report.evidence_digest(j).hex() == digest


def test_fabrication_evidence_in_json():
    j, _ = judged(fabricated)
    r2 = next(x for x in report.to_dict(j)["devices"] if x["node_id"] == 2)
    ex = r2["examples"]["fabricated_prev"][0]
    assert [(r["node_id"], r["prev_id"], r["next_id"]) for r in ex["records"]] == \
        [(2, 1, 3), (1, 0, 4)]
    assert r2["counts"]["fabricated_prev"] == 200
    d = report.to_dict(j)
    assert d["paths"] == [{"nodes": [1, 4, 3], "unproven": [], "entry_prev_id": 0,
                           "exit_next_id": 0, "packets": 200}]
    assert [(h["prev_id"], h["next_id"], h["confirmed"], h["delay_p50_ns"]) for h in d["hops"]] \
        == [(1, 4, 200, 300_000), (4, 3, 200, 300_000)]


def test_digest_is_canonical_and_binds_the_verdicts():
    ev, s, (lo, hi), _ = fabricated(Lab())
    j = judge(s, lo, hi, ev)
    again = judge(s, lo, hi, dict(reversed(list(ev.items()))))     # another order of answers
    assert report.evidence_digest(again) == report.evidence_digest(j)
    assert report.canonical_json(report.to_dict(again)) == report.canonical_json(report.to_dict(j))
    j.devices[2].verdict = "CONSISTENT"
    assert report.evidence_digest(j) != report.evidence_digest(again)
    assert len(report.evidence_digest(j)) == 32
    j2 = judge(s, lo, hi, ev, hash_name="blake2b-256")
    assert json.loads(report.to_json(j2))["digest"]["hash"] == "blake2b-256"


def test_canonical_json_refuses_floats():
    assert report.canonical_json({"b": [1, "x"], "a": None}) == b'{"a":null,"b":[1,"x"]}'
    with pytest.raises(ValueError, match="no floats, got 0.5"):
        report.canonical_json({"a": [{"b": 0.5}]})


# -- text -------------------------------------------------------------------------------------

def test_text_table():
    j, _ = judged(dropped)
    text = report.text_table(j, NAMES)
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("r2 "))
    assert row.split()[:8] == ["r2", "node", "2", "yes", "DROPPED", "200", "180", "20"]
    assert "20 of 200 packet(s) dropped" in row
    assert any(line.split()[:6] == ["r1", "->", "r2", "200", "200", "200"] for line in lines)
    assert "outside -> r1 -> r2 -> r3 -> outside" in text
    assert "outside -> r1 -> r2 -> dropped" in text
    assert lines[-1] == f"evidence digest (sha3-256): {report.evidence_digest(j).hex()}"
    assert all(line == line.rstrip() for line in lines)


def test_text_table_notes():
    j, _ = judged(no_answer)
    text = report.text_table(j)
    assert "node 3  node 3  yes    UNREACHABLE" in text
    assert "UNAVAILABLE: connection refused" in text
    assert "outside -> node 1 -> node 2 -> node 3 (unconfirmed)" in text
    lab = Lab()
    lab.flow()
    text = report.text_table(judge(sla(), 0, 10, lab.evidence()))
    assert "note: no traffic" in text and "0 packet(s) judged" in text
    assert "rule: at most 1 lying owner(s); named only if at fault in every explanation: the " \
        "evidence needs no liar" in text


def test_text_table_lists_the_explanations():
    j, _ = judged(silent_drop)
    text = report.text_table(j, NAMES)
    assert "rule: at most 1 lying owner(s); named only if at fault in every explanation: r1; " \
        "or r2" in text
    assert " AMBIGUOUS " in next(line for line in text.splitlines() if line.startswith("r2 "))
