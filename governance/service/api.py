"""The service's HTTP server on a loopback port: ``/metrics`` (Prometheus) and the read-only JSON
API (``/api/v1/...``; the shapes are documented in docs/governance-service.md). The standard
library's WSGI server with one thread per request, at most ``MAX_CONCURRENT`` at once (beyond:
503 at once), GET only, no request body read: a flood of this port costs a refusal each.

The web page (``/``, page.py) on the same port; with an ``[http]`` table the port speaks mutual
TLS and each client sees what its certificate is allowed (access.py); at most
``MAX_CONNECTIONS`` connections open at once, each with ``TIMEOUT_S`` to finish its handshake
and request; of those, at most ``MAX_IDLE_CONNECTIONS`` that have not sent their request yet
(a new one beyond closes the oldest of them: idle connections cannot keep a request out).
"""
import json
import logging
import re
import socket
import socketserver
import threading
import time
import urllib.parse
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import access, page
from .metrics import ServiceCollector

__all__ = ["HttpServer", "App", "MAX_CONCURRENT"]

log = logging.getLogger("beatd.governance.api")
MAX_CONCURRENT = 16
LIST_SERIES_EPOCHS = 120     # the series' last epochs in /api/v1/slas (?series=N for others)
MAX_CONNECTIONS = 64
MAX_IDLE_CONNECTIONS = 32          # of those, still to send their request line and headers
TIMEOUT_S = 10.0
NO_STORE = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", page.CSP), ("Referrer-Policy", "no-referrer")]


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64
    ssl_context = None              # mutual TLS (access.py), or plain HTTP on loopback
    on_refused = None

    def server_bind(self):
        super().server_bind()
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def get_request(self):
        sock, addr = super().get_request()
        if self.ssl_context is not None:    # the handshake in the request's thread (setup)
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request, client_address):
        self._evict_idle()
        if not self.connections.acquire(blocking=False):
            self._refused()
            self.shutdown_request(request)
            return
        with self._idle_lock:
            self._idle[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request, client_address):
        self._refused()                     # a failed handshake, a client gone: counted
        log.debug("HTTP connection from %s failed", client_address, exc_info=True)

    def _refused(self):
        if self.on_refused is not None:
            self.on_refused()

    def __init__(self, *args, **kw):
        self._idle = {}                    # socket -> accepted (monotonic): request not read yet
        self._idle_lock = threading.Lock()
        super().__init__(*args, **kw)

    def _evict_idle(self):
        """At MAX_IDLE_CONNECTIONS connections without their request yet, the oldest is closed
        (its thread reads EOF and ends): idle connections cannot keep a request out (S-7)."""
        with self._idle_lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                return
            oldest = min(self._idle, key=self._idle.get)
            del self._idle[oldest]
        try:
            oldest.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass

    def request_read(self, request):
        with self._idle_lock:
            self._idle.pop(request, None)

    def shutdown_request(self, request):
        self.request_read(request)
        super().shutdown_request(request)


class _Quiet(WSGIRequestHandler):
    timeout = TIMEOUT_S

    def setup(self):
        super().setup()
        if hasattr(self.connection, "do_handshake"):
            self.connection.do_handshake()  # a certificate of client_ca, or an exception

    def get_environ(self):
        env = super().get_environ()
        if hasattr(self.connection, "getpeercert"):
            env["beat.peer_cert"] = self.connection.getpeercert(binary_form=True)
        return env

    def log_message(self, *args):          # no access log on stderr (the metrics count)
        pass

    def parse_request(self):
        ok = super().parse_request()           # the request line and headers read
        self.server.request_read(self.request)
        return ok


def _hex(b):
    return None if b is None else bytes(b).hex()


def _addr(b):
    import ipaddress
    a = ipaddress.IPv6Address(bytes(b))
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


class App:
    """The WSGI application (usable without the server, for tests). ``http``: the access
    configuration (access.HttpConfig; default the service's ``[http]``, None: loopback)."""

    def __init__(self, service, http=access.LOCAL):
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(service))
        self.sem = threading.BoundedSemaphore(MAX_CONCURRENT)
        self.http_cfg = getattr(service.svc, "http", None) if http is access.LOCAL else http
        self.routes = [(re.compile(r"^/api/v1/slas/?$"), self.slas, "slas"),
                       (re.compile(r"^/api/v1/slas/(\d+)$"), self.sla, "sla"),
                       (re.compile(r"^/api/v1/routers/?$"), self.routers, "routers"),
                       (re.compile(r"^/api/v1/disputes/?$"), self.disputes, "disputes"),
                       (re.compile(r"^/api/v1/disputes/(\d+)/report$"), self.report, "report"),
                       (re.compile(r"^/api/v1/proposals/?$"), self.proposals, "proposals"),
                       (re.compile(r"^/api/v1/health/?$"), self.health, "health")]

    def count_refused(self):
        with self.service.counters.lock:
            self.service.counters.api_refused += 1

    def _answer(self, start, path, scope, kind, fn, *args, send=None, series=None):
        """``fn(*args)`` as the client's scope lets it see it: 404 when there is nothing (or
        nothing it may see), 500 when a report cannot be read, else sent (JSON unless
        ``send(out)`` gives the content type and body). SLAs get their ``series`` (the last
        ``series`` epochs) once cut to the client's view: a tenant's request reads its own."""
        try:
            out = scope.restrict(kind, fn(*args))
            if out is not None and kind in ("sla", "slas"):
                for o in (out if kind == "slas" else [out]):
                    o["series"] = self.service.state.series(o["sla_id"], series)
        except page.ReportError as exc:
            log.error("report unavailable: %s", exc)
            return self._refuse(start, "500 Internal Server Error",
                                f"{path}: the report cannot be read")
        if out is None:
            return self._refuse(start, "404 Not Found", f"{path}: not found")
        if send is not None:
            return self._send(start, *send(out))
        return self._send(start, "application/json", json.dumps(out, sort_keys=True).encode())

    def _refuse(self, start, status, text):
        self.count_refused()
        body = json.dumps({"error": text}).encode()
        start(status, [("Content-Type", "application/json"),
                       ("Content-Length", str(len(body)))] + NO_STORE)
        return [body]

    def _send(self, start, ctype, body):
        start("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))] + NO_STORE)
        return [body]

    def report(self, did):
        return page.dispute_report(self.service, int(did))

    def _visible(self, scope, did):
        view = self._view()
        d = view.disputes.get(did) if view is not None else None
        return d is not None and scope.sla(d.sla_id)

    def __call__(self, environ, start):
        if not self.sem.acquire(blocking=False):
            return self._refuse(start, "503 Service Unavailable",
                                f"more than {MAX_CONCURRENT} requests at once")
        try:
            if environ.get("REQUEST_METHOD") != "GET":
                return self._refuse(start, "405 Method Not Allowed", "read-only: GET only")
            path = environ.get("PATH_INFO", "")
            client = access.identify(self.http_cfg, environ.get("beat.peer_cert"))
            if not client.known:
                return self._refuse(start, "403 Forbidden", "this client certificate is not "
                                    "listed in [[http.clients]]")
            scope = access.Scope(client, self._view())
            if path == "/metrics":
                if not client.member:
                    return self._refuse(start, "403 Forbidden", "/metrics: members only")
                return self._send(start, CONTENT_TYPE_LATEST, generate_latest(self.registry))
            got = page.static(path)
            if got is not None:
                return self._send(start, *got)
            m = re.match(r"^/api/v1/disputes/(\d+)/report(\.svg)?$", path)
            if m and not self._visible(scope, int(m.group(1))):
                # another tenant's dispute: not even read (its answer would differ from 404)
                return self._refuse(start, "404 Not Found", f"{path}: not found")
            if m and m.group(2):
                return self._answer(start, path, scope, "report_svg", _svg_out, self.service,
                                    int(m.group(1)),
                                    send=lambda got: ("image/svg+xml", got["svg"]))
            if path == "/api/v1/access":
                out = {"client": client.name, "tenant": client.tenant,
                       "tls": self.http_cfg is not None}
                return self._send(start, "application/json", json.dumps(out).encode())
            for rx, fn, kind in self.routes:
                m = rx.match(path)
                if m:
                    try:
                        series = self._series_limit(environ.get("QUERY_STRING", ""), kind)
                    except ValueError as exc:
                        return self._refuse(start, "400 Bad Request", f"{path}: {exc}")
                    return self._answer(start, path, scope, kind, fn, *m.groups(),
                                        series=series)
            return self._refuse(start, "404 Not Found", f"{path}: not found (see "
                                "docs/governance-service.md)")
        finally:
            self.sem.release()

    # -- the JSON shapes (docs/governance-service.md, "JSON API") ------------------------------
    def _view(self):
        return self.service.watcher.view

    def _series_limit(self, query, kind):
        """The series' epochs an SLA answer holds: ``?series=N`` (0 to ``series_epochs``), else
        ``LIST_SERIES_EPOCHS`` for the list (1,000 SLAs' whole series are ~100 MB of JSON and
        seconds of the service's CPU, every page refresh) and all for one SLA."""
        got = urllib.parse.parse_qs(query).get("series")
        if got is None:
            return LIST_SERIES_EPOCHS if kind == "slas" else None
        try:
            n = int(got[-1])
        except ValueError:
            n = -1
        if not 0 <= n <= self.service.svc.series_epochs:
            raise ValueError(f"series={got[-1]!r}: an integer from 0 to series_epochs "
                             f"({self.service.svc.series_epochs})")
        return n

    def _sla_json(self, sla, st):
        out = {"sla_id": sla.sla_id, "tenant": sla.tenant, "src": _addr(sla.src),
               "dst": _addr(sla.dst), "route": list(sla.route),
               "terms": {"max_loss_ppm": sla.max_loss_ppm, "max_delay_us": sla.max_delay_us,
                         "loss_budget_ppm": sla.loss_budget_ppm},
               "valid_from_ns": sla.valid_from_ns, "valid_to_ns": sla.valid_to_ns,
               "epoch_ns": self.service.svc.epoch_ns,
               "monitor": {k: st.get(k) for k in (
                   "next_epoch", "epochs_evaluated", "violations", "unknown", "unknown_run",
                   "refused_receipts", "disputes_opened", "equivocations", "samples")}
               | {"streak": list(st.get("streak", ())),
                  "consecutive": self.service.svc.consecutive},
               "delay": st.get("last_delay")}
        return out

    def slas(self):
        view = self._view()
        if view is None:
            return []
        snap = self.service.state.snapshot()["slas"]
        return [self._sla_json(s, snap.get(str(s.sla_id), {}))
                for _, s in sorted(view.slas.items())]

    def sla(self, sid):
        view = self._view()
        s = view.slas.get(int(sid)) if view is not None else None
        if s is None:
            return None
        return self._sla_json(s, self.service.state.snapshot()["slas"].get(sid, {}))

    def routers(self):
        view = self._view()
        if view is None:
            return []
        names = self.service.gov.names
        out = []
        for n, node in sorted(view.nodes.items()):
            a = view.anchors.get(n)
            seen = self.service.watcher.seen.get((n, a.batch_seq)) if a is not None else None
            out.append({
                "node_id": n, "name": names.get(n, f"node {n}"), "owner": node.owner,
                "endpoint": self.service.gov.endpoints.get(n),
                "last_anchor": None if a is None else {
                    "batch_seq": a.batch_seq, "tree_size": a.tree_size,
                    "first_t_ns": a.first_t_ns, "last_t_ns": a.last_t_ns, "root": _hex(a.root),
                    "seen_ns": seen},
                "lag_s": None if a is None else round((view.t_ns - a.last_t_ns) / 1e9, 3)})
        return out

    def disputes(self):
        view = self._view()
        if view is None:
            return []
        mine = {}
        for e in self.service.state.snapshot()["disputes"].values():
            if e.get("dispute_id") is not None:
                mine[e["dispute_id"]] = e
        out = []
        for did, d in sorted(view.disputes.items()):
            steps = ["opened"] + [s for s in ("evidence", "decided", "settled")
                                  if _reached(d.state, s, d)]
            e = mine.get(did)
            report = None
            if e is not None and e.get("evidence_dir"):
                report = {"verdicts": e.get("verdicts"), "faulty": e.get("faulty"),
                          "named_at_fault": e.get("named_at_fault"),
                          "evidence_digest": e.get("evidence_digest"),
                          "verdict_digest": e.get("verdict_digest"),
                          "report_path": e["evidence_dir"] + "/report.json"}
            out.append({
                "dispute_id": did, "sla_id": d.sla_id, "from_ns": d.from_ns, "to_ns": d.to_ns,
                "state": d.state, "steps": steps, "evidence_digest": _hex(d.evidence_digest),
                "verdict_digest": _hex(d.verdict_digest), "faulty": list(d.faulty or ()),
                "penalty": d.penalty,
                "votes": [{"member": v.member, "verdict_digest": _hex(v.verdict_digest),
                           "evidence_digest": _hex(v.evidence_digest),
                           "dissent": v.dissent} for v in view.votes.get(did, ())],
                "service": None if e is None else {
                    "state": e["state"], "reason": e["reason"], "attempts": e.get("attempts"),
                    "unreachable": e.get("unreachable"), "report": report}})
        return out

    def proposals(self):
        view = self._view()
        if view is None:
            return {"committee": None, "pending": []}
        c = view.committee
        return {"committee": None if c is None else {
                    "k": c.k, "n": len(c.members), "epoch": c.epoch, "ttl_s": c.ttl_s},
                "pending": [{"proposal_id": p.proposal_id, "act": p.act, "args": p.args,
                             "approvals": list(p.approvals), "k": p.k, "expires_ns": p.expires_ns,
                             "state": p.state} for p in view.pending]}

    def health(self):
        w = self.service.watcher
        return {"ledger_up": w.up, "ledger_errors": w.errors, "polls": w.polls,
                "rounds": self.service.rounds, "view_t_ns": w.view.t_ns if w.view else None}


def _svg_out(service, did):
    got = page.dispute_svg(service, did)
    return None if got is None else {"sla_id": got[0], "svg": got[1]}


def _reached(state, step, d):
    order = ["opened", "evidence", "decided", "settled"]
    if step == "evidence" and d.evidence_digest is not None:
        return True
    return state in order and order.index(state) >= order.index(step)


class HttpServer:
    def __init__(self, service, host_port, http=access.LOCAL):
        self.app = App(service, http)
        host, port = host_port
        cls = _Server
        if self.app.http_cfg is not None:
            cls = type("_TlsServer", (_Server,),
                       {"ssl_context": access.server_context(self.app.http_cfg)})
        self.server = make_server(host, port, self.app, server_class=cls, handler_class=_Quiet)
        self.server.on_refused = self.app.count_refused
        self.port = self.server.server_port
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self.server.serve_forever, name="gov-http",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
