"""The governance service's web page (docs/governance-service.md, "Web page") in a real headless
Chromium (Debian's chromium and chromium-driver, driven by selenium), and its mutual-TLS access.

The service watches a loopback domain (tests/governance/loopback_domain.py: real stores, a real
local ledger, real Interrogation servers over mutual TLS) with two tenants: ``tenant``'s SLA 1 over
r1 -> r2 -> r3, where r2 drops every packet of the middle part of the traffic, and ``tenant-b``'s
SLA 2 over r3 -> r4. The page, opened before the dispute exists, must show it by itself (it polls
the JSON API): SLA 1's plots with a point per epoch whose loss is known, the routers, the dispute
with r2 DROPPED, its report (devices, the SVG of agreed and observed paths, per-hop loss and
delay, the evidence digest on the ledger) and no error in the browser's console (a Content-
Security-Policy violation would be one).

Over mutual TLS: each tenant's certificate sees its own SLA only, and the other's SLA, dispute
and report by id are 404 (as an id that does not exist); a certificate of the CA that is not
listed is 403; one from another CA is refused at the handshake.
"""
import json
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import IN_CI
import page_browser
from loopback_domain import V4, Domain

from beat_lab import ca as certs
from governance.interrogate import load_config
from governance.service import access
from governance.service.api import HttpServer
from governance.service.config import ConfigError, ServiceConfig, load as load_service
from governance.service.service import Service
from governance.service.state import State
from ledger_client.types import SLA

L = 10**9


def epochs_of(lo, hi):
    from loopback_domain import STEP_NS
    return list(range(((lo + L - 1) // L) * L, hi + STEP_NS - L + 1, L))


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    d = Domain(tmp_path_factory.mktemp("page-domain"), [(1, 2), (2, 3), (3, 4)])
    d.t = ((d.t0 // L) + 1) * L
    d.healthy = d.send((1, 2, 3), 2000, tag=1)
    d.dropped = d.send((1, 2, 3), 3000, tag=2, drop_at=2)
    d.after = d.send((1, 2, 3), 1500, tag=3)
    d.start()
    with d.ledger() as led:                    # the second tenant's SLA, over r3 -> r4
        led.register_sla(SLA(2, "tenant-b", V4 + bytes([10, 3, 0, 1]),
                             V4 + bytes([10, 4, 0, 1]), (3, 4)), signer=d.gov)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def service(domain, tmp_path_factory):
    """``beatctl serve``'s Service on the domain, run as the command runs it (its loop in a
    thread), its HTTP port on loopback without TLS."""
    tmp = tmp_path_factory.mktemp("page-service")
    cfg = ServiceConfig(state_dir=str(tmp / "state"), listen="127.0.0.1:0", poll_s=0.2,
                        consecutive=2, final_after_s=0.5, delay_sample_every_s=0,
                        retry_undecided_s=0.5)
    led = domain.ledger()
    svc = Service(led, domain.gov, cfg, load_config(str(domain.config)), State(cfg.state_dir))
    first = (domain.healthy[0] // L) * L
    with svc.state.lock:                       # evaluate the domain's traffic (in the past)
        for sla in (1, 2):
            svc.state.sla(sla)["next_epoch"] = first
    svc.start()
    yield svc
    svc.stop()
    svc.close()
    led.close()


def run(svc):
    """The service's loop (as governance/service/cli.py runs it), in a thread."""
    def loop():
        while not svc._stop.is_set():
            svc.watcher.changed.wait(svc.svc.poll_s)
            svc.watcher.changed.clear()
            svc.round()
            svc._stop.wait(min(svc.svc.poll_s, 0.5))
    t = threading.Thread(target=loop, name="test-service-loop", daemon=True)
    t.start()
    return t


def wait(pred, timeout=90, what="the condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached in {timeout} s")


def api(base, path, context=None):
    with urllib.request.urlopen(base + path, timeout=20, context=context) as r:
        return json.load(r)


def filed(svc):
    return [e for e in svc.state.snapshot()["disputes"].values() if e["state"] == "filed"]


# -- the browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not (page_browser.CHROMIUM and page_browser.CHROMEDRIVER):
        if IN_CI:
            pytest.fail(page_browser.MISSING)
        pytest.skip(page_browser.MISSING)
    driver = page_browser.open_chromium()
    yield driver
    driver.quit()


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def test_page_shows_the_slas_routers_and_the_dispute_with_its_report(domain, service, browser):
    svc = service
    base = f"http://127.0.0.1:{svc.http.port}"
    browser.get(base + "/")                     # before any round: nothing evaluated yet
    assert browser.title == "BEAT governance"
    wait(lambda: js(browser, "return document.body.dataset.updated"), 20, "the first poll")
    assert filed(svc) == []
    loop = run(svc)
    try:
        wait(lambda: filed(svc), 120, "the dispute filed")
        last = epochs_of(*domain.after)[-1]
        wait(lambda: any(r["epoch_ns"] == last for r in
                         svc.state.snapshot(series=True)["slas"]["1"]["series"]), 60, "every epoch read")
        # the page updates by itself (no reload): the dispute, its verdict, its report
        did = filed(svc)[0]["dispute_id"]
        card = f'.dispute[data-dispute="{did}"]'
        wait(lambda: page_browser.report_shown(browser, did), 30,
             "the dispute's report on the page")
    finally:
        svc.stop()
        loop.join(10)
    svc._stop.clear()
    # let the page take one more poll of the final state
    mark = js(browser, "return document.body.dataset.updated")
    wait(lambda: js(browser, "return document.body.dataset.updated") != mark, 20, "a poll")
    slas = api(base, "/api/v1/slas")
    routers = api(base, "/api/v1/routers")
    disputes = api(base, "/api/v1/disputes")
    report = api(base, f"/api/v1/disputes/{did}/report")

    # SLA plots: a point per epoch whose loss is known, the violating ones as such
    s1 = next(s for s in slas if s["sla_id"] == 1)
    known = [r for r in s1["series"] if r["loss_ppm"] is not None]
    bad = [r for r in s1["series"] if r["result"] == "violation"]
    assert len(bad) == len(epochs_of(*domain.dropped)) and len(known) > len(bad)
    pts = js(browser, """return [...document.querySelectorAll(
        '.sla[data-sla="1"] svg.plot-loss circle.point')].map(c => c.getAttribute('class'))""")
    assert len(pts) == len(known), (pts, known)
    assert sum("violation" in c for c in pts) == len(bad)
    assert sum(" ok" in c for c in pts) == sum(r["result"] == "ok" for r in known)
    assert js(browser, """return document.querySelectorAll(
        '.sla[data-sla="1"] svg.plot-loss line.term').length""") == 1
    route = js(browser, """return document.querySelector('.sla[data-sla="1"] .route')
        .textContent""")
    assert route == "agreed route: r1 \u2192 r2 \u2192 r3"
    assert js(browser, "return document.querySelectorAll('.sla').length") == len(slas) == 2

    # the routers table: every router the API lists, with its last anchor
    rows = js(browser, """return [...document.querySelectorAll('#routers tbody tr')].map(
        tr => [...tr.children].map(td => td.textContent))""")
    assert [int(r[0]) for r in rows] == [r["node_id"] for r in routers] == [1, 2, 3, 4]
    assert [r[1] for r in rows] == ["r1", "r2", "r3", "r4"]
    for row, r in zip(rows, routers):
        a = r["last_anchor"]
        assert row[4] == (str(a["batch_seq"]) if a else "never anchored")

    # the dispute: every ledger step, the decision, the verdicts, the report
    d = next(x for x in disputes if x["dispute_id"] == did)
    text = js(browser, f"return document.querySelector('{card}').textContent")
    steps = js(browser, f"""return [...document.querySelectorAll('{card} .steps span.done')]
        .map(s => s.textContent)""")
    assert steps == d["steps"] == ["opened", "evidence", "decided"]
    assert "at fault r2" in text and "r2 DROPPED" in text
    with svc.ledger_lock:                      # the ledger, as the service opened it
        on_ledger = svc.ledger.get_dispute(did).evidence_digest.hex()
    assert js(browser, f"""return document.querySelector('{card} .report .evidence-digest')
        .textContent""") == on_ledger == report["evidence_digest"]
    verdicts = js(browser, f"""return Object.fromEntries([...document.querySelectorAll(
        '{card} .report table.devices tbody tr')].map(tr => [tr.children[0].textContent,
        tr.children[3].textContent]))""")
    assert verdicts == {x["name"]: x["verdict"] for x in report["devices"]}
    assert {k: verdicts[k] for k in ("r1", "r2", "r3")} == {
        "r1": "CONSISTENT", "r2": "DROPPED", "r3": "CONSISTENT"}
    hops = js(browser, f"""return [...document.querySelectorAll(
        '{card} .report table.hops tbody tr')].map(tr => [...tr.children].map(
        td => td.textContent))""")
    # every hop the report holds, with its loss and delay: r1 handed r2 every packet (r2 then
    # dropped them: its verdict, not a hop's loss), and r2 -> r3 carried none in the window
    assert [h[0] for h in hops] == [h["hop"] for h in report["hops"]] == ["r1 -> r2"]
    (h12,) = report["hops"]
    assert h12["sent"] == h12["received"] == h12["confirmed"] > 0 and h12["lost"] == 0
    assert h12["p50_us"] is not None and 0 < h12["p50_us"] <= h12["p99_us"] <= h12["max_us"]
    assert [float(x) for x in hops[0][1:]] == [float(h12[k]) for k in (
        "sent", "received", "confirmed", "lost", "loss_ppm", "unverified", "p50_us", "p99_us",
        "max_us")]
    # the SVG the page shows is the report's own picture (governance/report.py), served as an
    # image: the agreed route and r2 in the DROPPED colour
    svg = urllib.request.urlopen(base + report["svg"], timeout=20)
    assert svg.headers["Content-Type"] == "image/svg+xml"
    body = svg.read().decode()
    assert "agreed route" in body and "#fdd835" in body and "observed" in body

    # no error in the console: no CSP violation, no failed request
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_headers_and_paths(domain, service):
    base = f"http://127.0.0.1:{service.http.port}"
    with urllib.request.urlopen(base + "/", timeout=10) as r:
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "<script" in r.read().decode()
    with urllib.request.urlopen(base + "/api/v1/slas", timeout=10) as r:
        assert r.headers["Cache-Control"] == "no-store"
    for path in ("/static/../api.py", "/static/api.py", "/api/v1/disputes/999/report",
                 "/api/v1/disputes/999/report.svg", "/api/v1/disputes/1/report/../../../x",
                 "/index.html", "/static/"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(base + path, timeout=10)
        assert exc.value.code == 404, path
    with pytest.raises(urllib.error.HTTPError) as exc:      # still read-only
        urllib.request.urlopen(urllib.request.Request(base + "/", method="POST"), timeout=10)
    assert exc.value.code == 405


# -- mutual TLS: who sees what ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = tmp_path_factory.mktemp("web-pki")
    certs.make_ca(p / "ca", common_name="BEAT web clients CA")
    certs.make_device(p / "ca", p / "server", 99, ips=["127.0.0.1"])     # the server's
    for name in ("tenant-a", "tenant-b", "member", "stranger"):
        certs.make_governance(p / "ca", p / "clients", name=name)
    certs.make_ca(p / "other-ca", common_name="another CA")
    certs.make_governance(p / "other-ca", p / "other", name="tenant-a")   # same CN, other CA
    return p


def _fingerprint(path):
    with open(path, "rb") as f:
        return access.fingerprint(ssl.PEM_cert_to_DER_cert(f.read().decode()))


def tls_config(domain, pki, tmp, listen="127.0.0.1:0"):
    path = tmp / "gov-web.toml"
    fp_b = _fingerprint(pki / "clients" / "tenant-b.crt")
    path.write_text(domain.config.read_text() + f"""
[service]
state_dir = "{tmp}/state"
listen = "{listen}"

[http]
tls_cert = "{pki}/server/device-99.crt"
tls_key = "{pki}/server/device-99.key"
client_ca = "{pki}/ca/ca.crt"

[[http.clients]]
cn = "beat-tenant-a"
tenant = "tenant"

[[http.clients]]
sha256 = "{':'.join(fp_b[i:i + 2] for i in range(0, 64, 2))}"
tenant = "tenant-b"

[[http.clients]]
cn = "beat-member"
member = true
""")
    return load_service(str(path))[0]


def client(pki, name, ca_dir="clients"):
    ctx = ssl.create_default_context(cafile=str(pki / "ca" / "ca.crt"))
    ctx.load_cert_chain(str(pki / ca_dir / f"{name}.crt"), str(pki / ca_dir / f"{name}.key"))
    return ctx


def status(base, path, ctx):
    try:
        with urllib.request.urlopen(base + path, timeout=10, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mutual_tls_each_tenant_sees_its_own(domain, service, pki, tmp_path):
    svc = service
    if not filed(svc):                          # the dispute of SLA 1 (the browser test's)
        loop = run(svc)
        try:
            wait(lambda: filed(svc), 120, "the dispute filed")
        finally:
            svc.stop()
            loop.join(10)
        svc._stop.clear()
    did = filed(svc)[0]["dispute_id"]
    cfg = tls_config(domain, pki, tmp_path)
    server = HttpServer(svc, ("127.0.0.1", 0), http=cfg.http).start()
    base = f"https://127.0.0.1:{server.port}"
    try:
        a, b, m = (client(pki, n) for n in ("tenant-a", "tenant-b", "member"))
        # tenant A (by CN): its SLA, its dispute and report, the routers of its route
        assert [s["sla_id"] for s in api(base, "/api/v1/slas", a)] == [1]
        assert api(base, "/api/v1/slas/1", a)["tenant"] == "tenant"
        assert [d["dispute_id"] for d in api(base, "/api/v1/disputes", a)] == [did]
        assert api(base, f"/api/v1/disputes/{did}/report", a)["faulty"] == [2]
        assert status(base, f"/api/v1/disputes/{did}/report.svg", a) == 200
        assert [r["node_id"] for r in api(base, "/api/v1/routers", a)] == [1, 2, 3]
        assert api(base, "/api/v1/access", a)["tenant"] == "tenant"
        assert status(base, "/", a) == 200
        # tenant B (by fingerprint): only SLA 2; A's SLA, dispute and report by id are 404,
        # the same answer as an id that does not exist
        assert [s["sla_id"] for s in api(base, "/api/v1/slas", b)] == [2]
        assert api(base, "/api/v1/disputes", b) == []
        assert [r["node_id"] for r in api(base, "/api/v1/routers", b)] == [3, 4]
        for path in ("/api/v1/slas/1", f"/api/v1/disputes/{did}/report",
                     f"/api/v1/disputes/{did}/report.svg", "/api/v1/slas/77"):
            assert status(base, path, b) == 404, path
        assert status(base, "/api/v1/slas/1", a) == 200
        assert api(base, "/api/v1/proposals", b)["pending"] == []
        assert status(base, "/metrics", b) == 403             # labelled with every SLA
        # a member: everything
        assert [s["sla_id"] for s in api(base, "/api/v1/slas", m)] == [1, 2]
        assert [r["node_id"] for r in api(base, "/api/v1/routers", m)] == [1, 2, 3, 4]
        assert status(base, "/metrics", m) == 200
        # a certificate of the CA that no entry lists: 403 on every path
        s = client(pki, "stranger")
        for path in ("/", "/api/v1/slas", "/api/v1/slas/1", "/api/v1/health"):
            assert status(base, path, s) == 403, path
        # the same CN from another CA, and no certificate at all: refused at the handshake
        for ctx in (client(pki, "tenant-a", "other"),
                    ssl.create_default_context(cafile=str(pki / "ca" / "ca.crt"))):
            with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
                with urllib.request.urlopen(base + "/api/v1/slas", timeout=10, context=ctx) as r:
                    r.read()
        # plain HTTP to the TLS port: no answer with data
        with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
            urllib.request.urlopen(base.replace("https", "http") + "/api/v1/slas",
                                   timeout=10).read()
    finally:
        server.stop()


def test_a_slow_handshake_does_not_hold_the_port(domain, service, pki, tmp_path):
    """A client that connects and says nothing (a slow-loris) occupies its own thread only;
    others are served meanwhile."""
    import socket
    cfg = tls_config(domain, pki, tmp_path)
    server = HttpServer(service, ("127.0.0.1", 0), http=cfg.http).start()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
    try:
        base = f"https://127.0.0.1:{server.port}"
        assert api(base, "/api/v1/health", client(pki, "member"))["ledger_up"] is True
    finally:
        for c in idle:
            c.close()
        server.stop()


@pytest.mark.parametrize("table,error", [
    ('[http]\ntls_cert = "{pki}/server/device-99.crt"\ntls_key = "{pki}/server/device-99.key"\n'
     'client_ca = "{pki}/ca/ca.crt"\n', "http.clients: none"),
    ('[http]\ntls_cert = "{pki}/server/device-99.crt"\nclient_ca = "{pki}/ca/ca.crt"\n'
     '[[http.clients]]\ncn = "x"\nmember = true\n', "http.tls_key: missing"),
    ('[http]\ntls_cert = "{pki}/server/device-99.crt"\ntls_key = "{pki}/server/device-99.key"\n'
     'client_ca = "{pki}/ca/ca.crt"\n[[http.clients]]\ncn = "x"\n', "exactly one of tenant"),
    ('[http]\ntls_cert = "{pki}/server/device-99.crt"\ntls_key = "{pki}/server/device-99.key"\n'
     'client_ca = "{pki}/ca/ca.crt"\n[[http.clients]]\nsha256 = "abc"\ntenant = "t"\n',
     "not a SHA-256 fingerprint"),
    ('[http]\ntls_cert = "{pki}/ca/ca.crt"\ntls_key = "{pki}/server/device-99.key"\n'
     'client_ca = "{pki}/ca/ca.crt"\n[[http.clients]]\ncn = "x"\nmember = true\n',
     "not a certificate and its key"),
])
def test_http_configuration_errors_name_the_key(domain, pki, tmp_path, table, error):
    path = tmp_path / "gov.toml"
    path.write_text(domain.config.read_text() + f'[service]\nstate_dir = "{tmp_path}/s"\n'
                    + table.format(pki=pki))
    with pytest.raises(ConfigError) as exc:
        load_service(str(path))
    assert error in str(exc.value)


def test_public_listen_needs_mutual_tls(domain, pki, tmp_path):
    path = tmp_path / "gov.toml"
    path.write_text(domain.config.read_text() + f'[service]\nstate_dir = "{tmp_path}/s"\n'
                    'listen = "0.0.0.0:9480"\n')
    with pytest.raises(ConfigError) as exc:
        load_service(str(path))
    assert "not a loopback address" in str(exc.value)
    cfg = tls_config(domain, pki, tmp_path, listen="0.0.0.0:9480")
    assert cfg.listen == "0.0.0.0:9480" and len(cfg.http.clients) == 3
