"""Reports of a judgement (governance/verdicts.py): a text table for people, canonical JSON for the
ledger, and an SVG picture of the agreed route beside the observed ones.

- ``to_dict``: every verdict with its reasons, counts and example records, the per-hop statistics,
  the observed paths, the SLA, the window and the parameters; integers and strings only (no
  floats), so that its canonical form is the same bytes everywhere.
- ``canonical_json``: sorted keys, no spaces, ASCII. ``evidence_digest`` is ``H`` (the domain's
  hash) over it: the value the governance records on the ledger (``record_evidence``).
- ``text_table``: devices, hops, paths and notes as fixed-width text.
- ``svg``: a self-contained SVG (no dependency): nodes coloured by verdict, edges labelled with
  packet counts.

``names`` (optional, everywhere): ``{node_id: "r1"}`` to label devices; default ``node N``.
"""
import json
from xml.sax.saxutils import escape

from fastpath.hashes import constructor
from fastpath.output import NONE

from .verdicts import (AMBIGUOUS, CONSISTENT, DEVIATED, DROPPED, FABRICATED, MISSING,
                       NOT_INTERROGATED, RING_SHORT, TAMPERED, UNREACHABLE)

__all__ = ["FORMAT", "COLOURS", "to_dict", "canonical_json", "evidence_digest", "to_json",
           "text_table", "svg"]

FORMAT = "beat-judgement-v1"
COLOURS = {CONSISTENT: "#4caf50", DEVIATED: "#ff9800", FABRICATED: "#9c27b0",
           MISSING: "#9e9e9e", TAMPERED: "#e53935", DROPPED: "#fdd835", AMBIGUOUS: "#90caf9",
           RING_SHORT: "#bcaaa4", UNREACHABLE: "#eeeeee", NOT_INTERROGATED: "#ffffff"}
_UNKNOWN = "#ffffff"          # named by claims, not interrogated


def _name(names, node):
    if node == 0:
        return "outside"
    if node == NONE:
        return "NONE"
    return (names or {}).get(node) or f"node {node}"


def _record(r):
    t, node, prev_id, next_id = r
    return {"node_id": node, "t_ns": t, "prev_id": prev_id, "next_id": next_id}


def _device(d):
    return {
        "node_id": d.node_id, "verdict": d.verdict, "applies": list(d.applies),
        "reasons": list(d.reasons), "on_route": d.on_route, "answered": d.answered,
        "error": d.error, "counts": dict(d.counts), "owner": d.owner, "status": d.status,
        "basis": d.basis, "at_fault": d.at_fault, "gaps": list(d.gaps),
        "examples": {kind: [{"pd": pd.hex(), "records": [_record(r) for r in recs]}
                            for pd, recs in exs]
                     for kind, exs in d.examples.items() if exs},
        "receipts": {role: dict(v) for role, v in d.receipts.items()},
        "counters": [dict(zip(("prev_id", "next_id", "packets", "bytes", "first_t_ns",
                               "last_t_ns"), c)) for c in d.counters],
    }


def to_dict(j):
    """The judgement as JSON-able data (module doc)."""
    s = j.sla
    return {
        "format": FORMAT,
        "sla": {"sla_id": s.sla_id, "tenant": s.tenant, "src": bytes(s.src).hex(),
                "dst": bytes(s.dst).hex(), "route": list(s.route),
                "loss_budget_ppm": s.loss_budget_ppm, "max_loss_ppm": s.max_loss_ppm,
                "max_delay_us": s.max_delay_us},
        "window": {"from_ns": j.from_ns, "to_ns": j.to_ns},
        "hash": j.hash_name,
        "ft": j.ft.hex(),
        "packets": j.packets,
        "params": dict(j.params),
        "devices": [_device(d) for d in j.devices.values()],
        "faulty": list(j.faulty),
        "hops": [{k: getattr(h, k) for k in ("prev_id", "next_id", "sent", "received",
                                             "confirmed", "lost", "unverified", "delay_p50_ns",
                                             "delay_p99_ns", "delay_max_ns")} for h in j.hops],
        "paths": [{"nodes": list(p.nodes), "unproven": list(p.unproven),
                   "entry_prev_id": p.entry_prev_id, "exit_next_id": p.exit_next_id,
                   "packets": p.packets} for p in j.paths],
        "not_interrogated": [{"node_id": n, "claims": c} for n, c in j.not_interrogated.items()],
        "notes": list(j.notes),
        "rule": {"f": j.f, "explained": j.explained,
                 "explanations": [_explanation(e) for e in j.explanations],
                 "owners_needed": j.owners_needed,
                 "candidates": [_explanation(e) for e in j.candidates],
                 "owners": {str(n): o for n, o in sorted(j.owners.items())}},
    }


def _explanation(e):
    return {"liars": sorted(e.liars), "owners": sorted(e.owners), "faulty": sorted(e.faulty)}


def canonical_json(data):
    """Sorted keys, compact separators, ASCII, UTF-8 bytes. Floats are refused: their text is not
    the same in every implementation."""
    def check(x):
        if isinstance(x, float):
            raise ValueError(f"canonical JSON holds no floats, got {x!r}")
        if isinstance(x, dict):
            for v in x.values():
                check(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                check(v)
    check(data)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def evidence_digest(j, data=None):
    """``H(canonical_json(to_dict(j)))``, 32 bytes, with the judgement's hash (``data``: that
    ``to_dict(j)`` when the caller has it already)."""
    return constructor(j.hash_name)(canonical_json(to_dict(j) if data is None else data)).digest()


def to_json(j, indent=2):
    """The report document: the judgement and the digest of its canonical form."""
    return json.dumps({"judgement": to_dict(j),
                       "digest": {"hash": j.hash_name, "evidence_digest":
                                  evidence_digest(j).hex()}},
                      sort_keys=True, indent=indent)


# -- text -----------------------------------------------------------------------------------------

def _ms(ns):
    return "-" if ns is None else f"{ns / 1e6:.3f}"


def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("{:<%d}" % w for w in widths)
    out = [line.format(*header).rstrip(), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, r)).rstrip() for r in rows]
    return out


def _key_evidence(d):
    if d.reasons:
        return d.reasons[0].split(": ", 1)[1]
    c = d.counts
    extra = [f"{c[k]} {k}" for k in ("unconfirmed", "absent", "disputed", "unverifiable",
                                     "egress_unseen", "join_missed", "unanchored") if c.get(k)]
    return ", ".join(extra) or "-"


def text_table(j, names=None, digest=None):
    """Devices, hops, observed paths and notes as fixed-width text."""
    s = j.sla
    out = [f"SLA {s.sla_id} ({s.tenant}): route {' -> '.join(_name(names, n) for n in s.route)}, "
           f"loss budget {s.loss_budget_ppm} ppm",
           f"window [{j.from_ns}, {j.to_ns}] ns, flow tag {j.ft.hex()}, {j.packets} packet(s) "
           f"judged", ""]
    out += _table(("device", "owner", "route", "verdict", "in", "out", "dropped", "key evidence"),
                  [(_name(names, d.node_id), d.owner or "-", "yes" if d.on_route else "no",
                    d.verdict, d.counts.get("received", 0), d.counts.get("forwarded", 0),
                    d.counts.get("dropped", 0), _key_evidence(d)) for d in j.devices.values()])
    out += ["", _rule_text(j, names)]
    if j.hops:
        out.append("")
        out += _table(("hop", "sent", "received", "confirmed", "lost", "unverified",
                       "p50 ms", "p99 ms", "max ms"),
                      [(f"{_name(names, h.prev_id)} -> {_name(names, h.next_id)}", h.sent,
                        h.received, h.confirmed, h.lost, h.unverified, _ms(h.delay_p50_ns),
                        _ms(h.delay_p99_ns), _ms(h.delay_max_ns)) for h in j.hops])
    if j.paths:
        out.append("")
        out += _table(("observed path", "packets"),
                      [(_path_text(p, names), p.packets) for p in j.paths])
    if j.notes:
        out += [""] + [f"note: {n}" for n in j.notes]
    digest = evidence_digest(j) if digest is None else digest
    out += ["", f"evidence digest ({j.hash_name}): {digest.hex()}"]
    return "\n".join(out) + "\n"


def _set_text(faulty, names):
    return " and ".join(_name(names, n) for n in sorted(faulty)) or "nobody"


def _rule_text(j, names):
    """One paragraph: f, and the minimal explanations (or that none has at most f owners)."""
    head = f"rule: at most {j.f} lying owner(s); named only if at fault in every explanation"
    if not j.explained:
        if j.owners_needed:
            alts = "; or ".join(_set_text(e.faulty, names) for e in j.candidates)
            return (f"{head}.\nno explanation with at most {j.f} lying owner(s): at least "
                    f"{j.owners_needed} owners lie ({alts}); only the devices' own evidence "
                    f"names anyone")
        return f"{head}.\nno explanation at all: only the devices' own evidence names anyone"
    alts = [e for e in j.explanations if e.faulty]
    if not alts:
        return f"{head}: the evidence needs no liar"
    return f"{head}: " + "; or ".join(_set_text(e.faulty, names) for e in alts)


def _end(names, node):
    """An observed path's entry or exit: outside, dropped / not seen, or a device whose record of
    the packet the path does not hold (it did not confirm it)."""
    if node in (0, NONE):
        return "outside" if node == 0 else "dropped"
    return f"{_name(names, node)} (unconfirmed)"


def _path_text(p, names):
    parts = [_end(names, p.entry_prev_id)]
    parts += [_name(names, n) + (" (no record)" if n in p.unproven else "") for n in p.nodes]
    parts.append(_end(names, p.exit_next_id))
    return " -> ".join(parts)


# -- SVG ------------------------------------------------------------------------------------------

_DX, _ROW, _R, _LEFT, _TOP = 150, 120, 26, 50, 100


def _utc(ns):
    """``2026-11-21 09:10:11.123456789`` (the window's ends, to the nanosecond)."""
    import time as _time
    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}"


def svg(j, names=None, max_paths=6):
    """The agreed route above the observed paths (the ``max_paths`` busiest), each device a circle
    coloured by its verdict, each edge labelled with packet counts; a legend and the list of
    every device with its verdict below."""
    paths = j.paths[:max_paths]
    confirmed = {(h.prev_id, h.next_id): h.confirmed for h in j.hops}
    route = list(j.sla.route)
    rows = [("agreed route", [0] + route + [0], (),
             [None] + [confirmed.get(e, 0) for e in zip(route, route[1:])] + [None])]
    for p in paths:
        nodes = [p.entry_prev_id] + list(p.nodes) + [p.exit_next_id]
        rows.append((f"observed: {p.packets} packet(s)", nodes, p.unproven,
                     [p.packets] * (len(nodes) - 1)))
    devices = list(j.devices.values())
    lines = [(escape(_name(names, d.node_id)), d.verdict,
              escape(d.reasons[0].split(": ", 1)[1] + "".join(f"; also {v}"
                                                              for v in d.applies[1:]))
              if d.reasons else "") for d in devices]
    title = (f"SLA {j.sla.sla_id} ({escape(j.sla.tenant)}): {j.packets} packet(s) in "
             f"{_utc(j.from_ns)} .. {_utc(j.to_ns)} UTC")
    width = max(_LEFT + _DX * (max(len(r[1]) for r in rows) - 1) + 60,
                max(7 * (len(a) + len(b) + len(c) + 6) for a, b, c in lines),
                9 * len(title) + 20)
    height = _TOP + _ROW * len(rows) + 40 + 22 * len(devices)
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
          f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
          '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
          'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
          'fill="#555"/></marker></defs>',
          f'<text x="10" y="24" font-size="15" font-weight="bold">{title}</text>']
    for k, (title, nodes, unproven, counts) in enumerate(rows):
        el += _row(j, names, _TOP + _ROW * k, title, nodes, unproven, counts)
    y = _TOP + _ROW * len(rows) - 30
    x = 10
    for verdict, colour in COLOURS.items():
        el.append(f'<rect x="{x}" y="{y}" width="14" height="14" fill="{colour}" '
                  f'stroke="#333"/><text x="{x + 18}" y="{y + 12}">{verdict}</text>')
        x += 30 + 8 * len(verdict)
    y += 36
    for name, verdict, reason in lines:
        el.append(f'<text x="10" y="{y}"><tspan font-weight="bold">{name}</tspan>: {verdict}'
                  f'{" (" + reason + ")" if reason else ""}</text>')
        y += 22
    el.append("</svg>")
    return "\n".join(el) + "\n"


def _row(j, names, y, title, nodes, unproven, counts):
    el = [f'<text x="10" y="{y - 42}" font-weight="bold">{escape(title)}</text>']
    xs = [_LEFT + _DX * i for i in range(len(nodes))]
    for i in range(len(nodes) - 1):
        x1, x2 = xs[i] + _R, xs[i + 1] - _R
        el.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#555" '
                  f'stroke-width="2" marker-end="url(#arrow)"/>')
        if counts[i] is not None:
            el.append(f'<text x="{(x1 + x2) // 2}" y="{y - 8}" text-anchor="middle">'
                      f'{counts[i]}</text>')
    for i, node in enumerate(nodes):
        x = xs[i]
        end = i in (0, len(nodes) - 1)
        if end and node in (0, NONE):
            label = "dropped" if node == NONE else "outside"
            el.append(f'<rect x="{x - _R}" y="{y - 14}" width="{2 * _R}" height="28" rx="6" '
                      f'fill="#eeeeee" stroke="#999"/><text x="{x}" y="{y + 4}" '
                      f'text-anchor="middle" font-size="10">{label}</text>')
            continue
        d = j.devices.get(node)
        verdict = d.verdict if d is not None else "not interrogated"
        fill = COLOURS.get(verdict, _UNKNOWN)
        dash = ' stroke-dasharray="4 3"' if node in unproven and 0 < i < len(nodes) - 1 else ""
        el.append(f'<circle cx="{x}" cy="{y}" r="{_R}" fill="{fill}" stroke="#333" '
                  f'stroke-width="2"{dash}/>')
        el.append(f'<text x="{x}" y="{y + 4}" text-anchor="middle" font-weight="bold">'
                  f'{escape(_name(names, node))}</text>')
        el.append(f'<text x="{x}" y="{y + _R + 16}" text-anchor="middle" font-size="10">'
                  f'{verdict}{" (no record)" if dash else ""}</text>')
    return el
