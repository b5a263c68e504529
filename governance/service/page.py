"""The service's web page (docs/governance-service.md, "Web page"): the static files of
``static/`` (a fixed list: no path from the request reaches the file system) and the verdict
report of a dispute this service filed, read from the report file it wrote
(``<state_dir>/evidence/d<id>/report.json``, governance/report.py's ``to_dict``) and shown as
governance/report.py shows it: the text table, the SVG of the agreed route beside the observed
paths, the per-hop loss and delay, the evidence digest.

The page is read-only and draws its plots itself (static/page.js, inline SVG): no external
resource, no inline script (the Content-Security-Policy below forbids both).
"""
import json
import os
import types

from .. import report as rep

__all__ = ["STATIC", "CSP", "static", "dispute_report", "dispute_svg", "ReportError"]

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
          "/static/page.css": ("page.css", "text/css; charset=utf-8"),
          "/static/icon.svg": ("icon.svg", "image/svg+xml")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_REPORT_BYTES = 64 << 20
MAX_REPORTS_CACHED = 16
_cache = {}                    # static file name -> bytes
_reports = {}                  # (path, mtime, size) -> the report's data


class ReportError(Exception):
    """A report file that is missing or not a report (the message names the file)."""


def static(path):
    """``(content type, bytes)`` of the page's file at URL ``path``, or None (not one of them)."""
    entry = STATIC.get(path)
    if entry is None:
        return None
    name, ctype = entry
    body = _cache.get(name)
    if body is None:
        with open(os.path.join(_DIR, name), "rb") as f:
            body = _cache[name] = f.read()
    return ctype, body


# -- the report of a dispute -------------------------------------------------------------------

def _entry(service, dispute_id):
    for e in service.state.snapshot()["disputes"].values():
        if e.get("dispute_id") == dispute_id and e.get("evidence_dir"):
            return e
    return None


def _report_file(service, e):
    """The report file of state entry ``e``, only inside ``<state_dir>/evidence``."""
    root = os.path.realpath(os.path.join(service.state.dir, "evidence"))
    path = os.path.realpath(os.path.join(e["evidence_dir"], "report.json"))
    if os.path.commonpath([root, path]) != root:
        raise ReportError(f"{path}: outside the service's evidence directory {root}")
    return path


def _load(path):
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        hit = _reports.get(key)
        if hit is not None:
            return hit
        if st.st_size > MAX_REPORT_BYTES:
            raise ReportError(f"{path}: {st.st_size} bytes, more than {MAX_REPORT_BYTES}")
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the report: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != rep.FORMAT:
        raise ReportError(f"{path}: not a {rep.FORMAT} report")
    if len(_reports) >= MAX_REPORTS_CACHED:
        _reports.clear()
    _reports[key] = data
    return data


def judgement(data):
    """A read-only judgement with the attributes governance/report.py reads, from its
    ``to_dict`` (the report file)."""
    ns = types.SimpleNamespace
    devices = {}
    for d in data["devices"]:
        devices[d["node_id"]] = ns(**{k: d.get(k) for k in (
            "node_id", "verdict", "reasons", "on_route", "owner", "status", "at_fault")},
            applies=list(d.get("applies") or ()), counts=dict(d.get("counts") or {}))
    rule = data.get("rule", {})

    def expl(e):
        return ns(liars=set(e["liars"]), owners=set(e["owners"]), faulty=set(e["faulty"]))
    return ns(sla=ns(**data["sla"]), from_ns=data["window"]["from_ns"],
              to_ns=data["window"]["to_ns"], hash_name=data["hash"],
              ft=bytes.fromhex(data["ft"]), packets=data["packets"], devices=devices,
              faulty=list(data["faulty"]), hops=[ns(**h) for h in data["hops"]],
              paths=[ns(**p) for p in data["paths"]], notes=list(data["notes"]),
              f=rule.get("f"), explained=rule.get("explained"),
              explanations=[expl(e) for e in rule.get("explanations", ())],
              owners_needed=rule.get("owners_needed"),
              candidates=[expl(e) for e in rule.get("candidates", ())])


def _us(ns_):
    return None if ns_ is None else round(ns_ / 1e3, 1)


def dispute_report(service, dispute_id):
    """The report of dispute ``dispute_id`` as the page shows it; None when this service has
    none (not its dispute, not interrogated yet, or not on the ledger)."""
    view = service.watcher.view
    d = view.disputes.get(dispute_id) if view is not None else None
    e = _entry(service, dispute_id)
    if d is None or e is None:
        return None
    data = _load(_report_file(service, e))
    j = judgement(data)
    names = service.gov.names
    digest = bytes.fromhex(e["evidence_digest"])
    hops = []
    for h in j.hops:
        sent = h.sent or 0
        hops.append({"hop": f"{rep._name(names, h.prev_id)} -> {rep._name(names, h.next_id)}",
                     "prev_id": h.prev_id, "next_id": h.next_id, "sent": h.sent,
                     "received": h.received, "confirmed": h.confirmed, "lost": h.lost,
                     "unverified": h.unverified,
                     "loss_ppm": round(1e6 * h.lost / sent) if sent else None,
                     "p50_us": _us(h.delay_p50_ns), "p99_us": _us(h.delay_p99_ns),
                     "max_us": _us(h.delay_max_ns)})
    return {"dispute_id": dispute_id, "sla_id": d.sla_id,
            "window": {"from_ns": j.from_ns, "to_ns": j.to_ns}, "packets": j.packets,
            "hash": j.hash_name, "evidence_digest": e["evidence_digest"],
            "verdict_digest": e.get("verdict_digest"), "faulty": e.get("faulty"),
            "devices": [{"node_id": x.node_id, "name": rep._name(names, x.node_id),
                         "owner": x.owner, "on_route": x.on_route, "verdict": x.verdict,
                         "received": x.counts.get("received", 0),
                         "forwarded": x.counts.get("forwarded", 0),
                         "dropped": x.counts.get("dropped", 0),
                         "evidence": rep._key_evidence(x)} for x in j.devices.values()],
            "hops": hops,
            "paths": [{"path": rep._path_text(p, names), "packets": p.packets} for p in j.paths],
            "rule": rep._rule_text(j, names), "notes": j.notes,
            "table": rep.text_table(j, names, digest=digest),
            "svg": f"/api/v1/disputes/{dispute_id}/report.svg"}


def dispute_svg(service, dispute_id):
    """``(sla_id, svg bytes)`` of the dispute's report, or None (as dispute_report)."""
    view = service.watcher.view
    d = view.disputes.get(dispute_id) if view is not None else None
    e = _entry(service, dispute_id)
    if d is None or e is None:
        return None
    j = judgement(_load(_report_file(service, e)))
    return d.sla_id, rep.svg(j, service.gov.names).encode()
