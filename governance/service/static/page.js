// The governance service's page (docs/governance-service.md, "Web page"): reads the JSON API
// every few seconds and draws it. Read-only; text goes in through textContent only; the plots
// are inline SVG made here (no library, no external resource).
"use strict";

const POLL_MS = 3000;
const SVGNS = "http://www.w3.org/2000/svg";
const reports = new Map();          // dispute_id -> rendered report element (fetched once)

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function sv(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function utc(ns) {
  if (ns === null || ns === undefined) return "-";
  const d = new Date(Math.floor(ns / 1e6));
  return d.toISOString().replace("T", " ").replace("Z", "");
}

function num(v, unit) {
  return v === null || v === undefined ? "-" : String(v) + (unit || "");
}

async function get(path) {
  const r = await fetch(path, {cache: "no-store", credentials: "same-origin"});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// -- plots ------------------------------------------------------------------------------------

// One value per epoch against a term: a point per epoch with a value (coloured by the epoch's
// result), a grey mark at the bottom for an epoch whose value is not known, the term as a dashed
// line (null: no term).
function plot(kind, title, unit, series, value, term) {
  const W = 620, H = 170, L = 56, R = 10, T = 20, B = 28;
  const s = sv("svg", {class: "plot plot-" + kind, width: W, height: H,
                       viewBox: `0 0 ${W} ${H}`, role: "img"});
  s.append(sv("title", {}, title));
  s.append(sv("text", {x: L, y: 13}, title));
  const vals = series.map(value).filter(v => v !== null && v !== undefined);
  let top = Math.max(1, ...vals);
  if (term !== null) top = Math.max(top, term * 1.5);
  const n = Math.max(series.length, 2);
  const x = i => L + (W - L - R) * i / (n - 1);
  const y = v => H - B - (H - B - T) * v / top;
  s.append(sv("line", {class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}));
  s.append(sv("line", {class: "axis", x1: L, y1: T, x2: L, y2: H - B}));
  s.append(sv("text", {x: 4, y: T + 4}, Math.round(top) + unit));
  s.append(sv("text", {x: 4, y: H - B}, "0" + unit));
  if (series.length) {
    s.append(sv("text", {x: L, y: H - 8}, utc(series[0].epoch_ns).slice(11, 19)));
    s.append(sv("text", {x: W - R - 50, y: H - 8},
                utc(series[series.length - 1].epoch_ns).slice(11, 19)));
  }
  if (term !== null) {
    s.append(sv("line", {class: "term", x1: L, y1: y(term), x2: W - R, y2: y(term)}));
    s.append(sv("text", {x: W - R - 120, y: y(term) - 4}, "term " + term + unit));
  }
  let d = "";
  series.forEach((r, i) => {
    const v = value(r);
    if (v === null || v === undefined) {
      const m = sv("rect", {class: "unknown", x: x(i) - 1, y: H - B - 6, width: 2, height: 6});
      m.append(sv("title", {}, `${utc(r.epoch_ns)}: ${r.result} (${(r.reasons || []).join("; ")})`));
      s.append(m);
      return;
    }
    d += (d ? " L " : "M ") + x(i).toFixed(1) + " " + y(v).toFixed(1);
    const c = sv("circle", {class: "point " + r.result, cx: x(i).toFixed(1),
                            cy: y(v).toFixed(1), r: 2.5});
    c.append(sv("title", {}, `${utc(r.epoch_ns)}: ${r.result}, ${v}${unit}` +
                             (r.ingress !== null ? ` (in ${r.ingress}, out ${r.egress})` : "")));
    s.append(c);
  });
  if (d) s.insertBefore(sv("path", {class: "line", d: d}), s.querySelector("circle"));
  return s;
}

function slaCard(s, names) {
  const route = s.route.map(n => names.get(n) || "node " + n).join(" \u2192 ");
  const t = s.terms, m = s.monitor;
  const card = el("div", {class: "card sla", "data-sla": s.sla_id},
    el("h3", {}, `SLA ${s.sla_id} (${s.tenant}): ${s.src} \u2192 ${s.dst}`),
    el("p", {class: "route"}, "agreed route: " + route),
    el("p", {class: "terms"}, `terms: loss at most ${t.max_loss_ppm} ppm per epoch` +
       (t.max_delay_us ? `, delay at most ${t.max_delay_us} \u00b5s` : ", no delay term") +
       `, loss budget ${t.loss_budget_ppm} ppm; epoch ${s.epoch_ns / 1e9} s`),
    el("p", {class: "meta"}, `epochs evaluated ${num(m.epochs_evaluated)}, violations ` +
       `${num(m.violations)}, unknown ${num(m.unknown)} (in a row now ${num(m.unknown_run)}), ` +
       `streak ${m.streak.length}/${m.consecutive}, disputes opened ${num(m.disputes_opened)}, ` +
       `refused receipts ${num(m.refused_receipts)}, equivocations ${num(m.equivocations)}`));
  const series = s.series || [];
  const plots = el("div", {class: "plots"});
  plots.append(plot("loss", "loss per epoch (ppm)", " ppm", series, r => r.loss_ppm,
                    t.max_loss_ppm));
  plots.append(plot("delay", "end-to-end delay per epoch (\u00b5s, sampled)", " \u00b5s", series,
                    r => r.delay_us, t.max_delay_us || null));
  card.append(plots);
  if (s.delay && s.delay.e2e) {
    const e = s.delay.e2e;
    card.append(el("p", {class: "meta"}, `last delay sample: p50 ${num(e.p50_us)} \u00b5s, ` +
      `p${e.percentile} ${num(e.pct_us)} \u00b5s, max ${num(e.max_us)} \u00b5s over ` +
      `${e.count} packets; hops: ` + (s.delay.hops || []).map(h =>
        `${names.get(h.prev_id) || h.prev_id}\u2192${names.get(h.next_id) || h.next_id} ` +
        `p99 ${num(h.p99_us)} \u00b5s`).join(", ")));
  }
  return card;
}

// -- tables -----------------------------------------------------------------------------------

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map(cells => el("tr", {}, ...cells.map(c =>
    c instanceof Node ? el("td", {}, c) :
      el("td", typeof c === "number" ? {class: "num"} : {}, c === null ? "-" : c)))));
}

function routerRows(routers) {
  return routers.map(r => {
    const a = r.last_anchor;
    const lag = r.lag_s === null ? "-" : el("span", r.lag_s > 10 ? {class: "lagging"} : {},
                                            r.lag_s.toFixed(1));
    return [r.node_id, r.name, r.owner, r.endpoint || "-", a ? a.batch_seq : "never anchored",
            a ? a.tree_size : "-", a ? utc(a.last_t_ns) : "-", lag,
            a && a.seen_ns ? utc(a.seen_ns) : "-"];
  });
}

function steps(d) {
  const all = ["opened", "evidence", "decided", "settled"];
  return el("p", {class: "steps"}, ...all.map(s =>
    el("span", {class: d.steps.includes(s) ? "done" : "todo"}, s)));
}

function reportView(r, names) {
  const box = el("div", {class: "report", "data-dispute": r.dispute_id});
  box.append(el("h4", {}, "verdict report"));
  box.append(el("p", {}, `window ${utc(r.window.from_ns)} .. ${utc(r.window.to_ns)} UTC, ` +
                `${r.packets} packet(s) judged; at fault: ` +
                ((r.faulty || []).length ? r.faulty.map(n => names.get(n) || "node " + n).join(", ")
                                          : "nobody")));
  const devs = el("table", {class: "devices"}, el("thead", {}, el("tr", {},
    ...["device", "owner", "on route", "verdict", "in", "out", "dropped", "key evidence"]
      .map(h => el("th", {}, h)))));
  devs.append(el("tbody", {}, ...r.devices.map(d => el("tr", {},
    el("td", {}, d.name), el("td", {}, d.owner || "-"), el("td", {}, d.on_route ? "yes" : "no"),
    el("td", {class: "verdict " + d.verdict}, d.verdict), el("td", {class: "num"}, d.received),
    el("td", {class: "num"}, d.forwarded), el("td", {class: "num"}, d.dropped),
    el("td", {}, d.evidence)))));
  box.append(devs);
  box.append(el("p", {class: "rule"}, r.rule));
  box.append(el("img", {class: "report-svg", src: r.svg,
                        alt: `dispute ${r.dispute_id}: agreed route and observed paths`}));
  const hops = el("table", {class: "hops"}, el("thead", {}, el("tr", {},
    ...["hop", "sent", "received", "confirmed", "lost", "loss (ppm)", "unverified",
        "p50 (\u00b5s)", "p99 (\u00b5s)", "max (\u00b5s)"].map(h => el("th", {}, h)))));
  hops.append(el("tbody", {}, ...r.hops.map(h => el("tr", {}, el("td", {}, h.hop),
    ...[h.sent, h.received, h.confirmed, h.lost, h.loss_ppm, h.unverified, h.p50_us, h.p99_us,
        h.max_us].map(v => el("td", {class: "num"}, num(v)))))));
  box.append(el("h4", {}, "per hop: loss and delay"), hops);
  box.append(el("p", {}, "evidence digest (", r.hash, "): ",
                el("span", {class: "digest evidence-digest"}, r.evidence_digest)));
  box.append(el("p", {}, "verdict digest: ",
                el("span", {class: "digest"}, r.verdict_digest || "-")));
  box.append(el("details", {}, el("summary", {}, "report as text"),
                el("pre", {class: "table"}, r.table)));
  return box;
}

function disputeCard(d, names) {
  const card = el("div", {class: "card dispute", "data-dispute": d.dispute_id},
    el("h3", {}, `dispute ${d.dispute_id} on SLA ${d.sla_id}: ${d.state}`),
    el("p", {class: "meta"}, `window ${utc(d.from_ns)} .. ${utc(d.to_ns)} UTC`), steps(d));
  if (d.faulty && d.faulty.length || d.state === "decided" || d.state === "settled") {
    card.append(el("p", {class: "decision"}, "decision: at fault ",
      el("span", {class: "verdict faulty"},
         d.faulty.length ? d.faulty.map(n => names.get(n) || "node " + n).join(", ") : "nobody"),
      d.penalty ? `, penalty ${d.penalty}` : ""));
  }
  if (d.evidence_digest)
    card.append(el("p", {}, "evidence digest on the ledger: ",
                   el("span", {class: "digest"}, d.evidence_digest)));
  if (d.votes && d.votes.length) {
    card.append(el("p", {class: "meta"}, "votes: " + d.votes.map(v =>
      `${v.member.slice(0, 16)}\u2026${v.dissent ? " (dissent)" : ""}`).join(", ")));
  }
  const s = d.service;
  if (s) {
    card.append(el("p", {class: "meta service"}, `this service: ${s.state} (${s.reason}), ` +
      `attempts ${num(s.attempts)}` +
      (s.unreachable && s.unreachable.length ? `, unreachable ${s.unreachable.join(", ")}` : "")));
    if (s.report && s.report.verdicts) {
      card.append(el("p", {class: "verdicts"}, "verdicts: ",
        ...Object.entries(s.report.verdicts).flatMap(([n, v]) => [
          (names.get(Number(n)) || "node " + n) + " ",
          el("span", {class: "verdict " + v}, v), " "])));
      let rv = reports.get(d.dispute_id);
      if (rv) card.append(rv);
      else loadReport(d.dispute_id, names);
    }
  }
  return card;
}

async function loadReport(id, names) {
  if (reports.has(id)) return;
  reports.set(id, null);
  try {
    const r = await get(`/api/v1/disputes/${id}/report`);
    reports.set(id, reportView(r, names));
    const card = document.querySelector(`.dispute[data-dispute="${id}"]`);
    if (card && !card.querySelector(".report")) card.append(reports.get(id));
  } catch (e) {
    reports.delete(id);
  }
}

// -- the poll ---------------------------------------------------------------------------------

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [who, health, slas, routers, disputes, proposals] = await Promise.all([
      get("/api/v1/access"), get("/api/v1/health"), get("/api/v1/slas"),
      get("/api/v1/routers"), get("/api/v1/disputes"), get("/api/v1/proposals")]);
    const names = new Map(routers.map(r => [r.node_id, r.name]));
    status.className = health.ledger_up ? "status" : "status down";
    status.textContent = (health.ledger_up ? "ledger read " : "ledger NOT readable; last read ") +
      utc(health.view_t_ns) + " UTC; " + (who.tenant ? `tenant ${who.tenant}` : "all SLAs") +
      (who.tls ? ` (${who.client})` : "");
    const sl = document.getElementById("slas");
    sl.replaceChildren(...(slas.length ? slas.map(s => slaCard(s, names))
                                        : [el("p", {class: "empty"}, "none")]));
    fillTable("routers", routerRows(routers));
    const ds = document.getElementById("disputes");
    ds.replaceChildren(...(disputes.length ? disputes.slice().reverse().map(d =>
      disputeCard(d, names)) : [el("p", {class: "empty"}, "none")]));
    const c = proposals.committee;
    document.getElementById("committee").textContent = c ?
      `committee: ${c.n} members, ${c.k} approvals decide (epoch ${c.epoch})` : "";
    fillTable("proposals", proposals.pending.map(p => [p.proposal_id, p.act,
      JSON.stringify(p.args), p.approvals.length ? p.approvals.map(a => String(a).slice(0, 16))
        .join(", ") : "nobody yet", p.k, utc(p.expires_ns), p.state]));
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    status.className = "status down";
    status.textContent = "cannot read the service: " + e.message;
  }
}

refresh();
setInterval(refresh, POLL_MS);
