"""The neighbour map the pipeline looks prev_id/next_id up in: ``{mac: (node_id, interfaces)}``,
``interfaces`` the names of the interfaces where that neighbour is (its MAC names it only on them;
a frame carrying it on another interface came from somewhere the device cannot name), or ``None``
for a neighbour named by its MAC on every interface.

It is made of the configuration's neighbours (their ``mac``, and ``interface``) and, with
``daemon.neighbour_refresh``, of the kernel's neighbour table (ARP/NDP, read over rtnetlink by
``beatd.neigh_netlink``), which gives each entry's interface: a configured neighbour that gives an
``ip`` but no ``mac`` takes the MAC the kernel has for that IP, on the interface of the kernel's
entry (or on its configured ``interface``). A neighbour given by its ``mac`` without an
``interface`` is named by that MAC on every interface (``beatd run`` warns about each). A MAC given
in the configuration always wins: a neighbour with a ``mac`` never takes the kernel's (a kernel
entry that contradicts it is logged), and a MAC learned from the kernel never displaces a
configured one. ``on_change(map)`` is called (from whichever thread saw the change) only when the
map changes. ``pipeline_map(map, slots)`` turns it into the pipeline's form (docs/fastpath.md
"Neighbour ids").

**A learned MAC is kept until the kernel names another.** The table is read at start, on
``reload_kernel()`` (SIGHUP) and every ``resync_s`` (the backstop for a missed event), and followed
in a thread through netlink RTM_NEWNEIGH / RTM_DELNEIGH (and RTM_DELLINK) events. Only a live entry
(REACHABLE, STALE, DELAY, PROBE, PERMANENT) with a unicast MAC teaches a MAC; a NOARP entry's MAC is
the kernel's own invention (on an interface without ARP: the device's own MAC), never the
neighbour's. An entry that is deleted (``ip neigh flush``, a link going down, garbage collection),
FAILED or INCOMPLETE does not forget the MAC: the neighbour's frames keep its name while the kernel
relearns it. Forgetting it would record them as from "outside" until then, and records that name
the wrong neighbour make an honest router look like a liar; an IP that moved to another device
gets that device's MAC as soon as the kernel learns it (logged as a change of MAC). A learned MAC
is forgotten when the neighbour's entry changes in the configuration, its interface is deleted, or
the daemon restarts.
"""
import ipaddress
import logging
import select
import socket
import threading
import time

from . import neigh_netlink as nl
from .logs import event

__all__ = ["NeighbourMap", "compute_map", "pipeline_map", "unbound", "DEFAULT_RESYNC_S"]

log = logging.getLogger("beatd.neighbours")

DEFAULT_RESYNC_S = 30.0     # daemon.neighbour_resync_s: the kernel table read again this often


def _norm_ip(ip):
    try:
        return str(ipaddress.ip_address(str(ip).split("%")[0]))
    except ValueError:
        return None


def _ifname(ifindex):
    """The name of interface ``ifindex`` in this namespace, or None when it has none now."""
    try:
        return socket.if_indextoname(int(ifindex))
    except (OSError, TypeError, ValueError):
        return None


def _mac(mac):
    return ":".join(f"{b:02x}" for b in mac)


def compute_map(neighbours, kernel):
    """``{mac: (node_id, interfaces)}`` from the configured neighbours and the kernel's
    ``{ip: {ifname: mac}}``; ``interfaces`` a sorted tuple of names, or None (every interface)."""
    out = {n.mac: (n.node_id, None if n.interface is None else (n.interface,))
           for n in neighbours if n.mac is not None}
    learned = {}
    for n in neighbours:
        if n.mac is None and n.ip is not None:
            for ifname, mac in sorted(kernel.get(n.ip, {}).items()):
                if mac in out:
                    continue
                nid, ifs = learned.setdefault(mac, (n.node_id, set()))
                if nid == n.node_id:
                    ifs.add(n.interface if n.interface is not None else ifname)
    for mac, (nid, ifs) in learned.items():
        out[mac] = (nid, tuple(sorted(ifs)))
    return out


def unbound(neighbours):
    """The configured neighbours whose MAC names them on every interface (a ``mac`` without an
    ``interface``): frames from any captured interface carrying it are taken as theirs."""
    return [n for n in neighbours if n.mac is not None and n.interface is None]


def pipeline_map(bindings, slots):
    """The pipeline's neighbour map (docs/fastpath.md "Neighbour ids") of ``bindings`` (as
    ``compute_map``), with ``slots`` ``{ifname: slot}`` of the capture: ``node_id`` for a
    neighbour on every interface, ``(node_id, slots)`` for one bound to interfaces (those not
    captured have no slot: a neighbour only there is named by no captured frame)."""
    return {mac: nid if ifs is None else (nid, tuple(sorted(slots[i] for i in ifs if i in slots)))
            for mac, (nid, ifs) in bindings.items()}


class _Learned:
    """What the kernel taught about one (ip, ifindex): the MAC, the interface's name when it was
    last seen, the entry's state now, and whether the kernel still has a live entry."""
    __slots__ = ("mac", "ifname", "state", "live", "since")

    def __init__(self, mac, ifname, state):
        self.mac, self.ifname, self.state, self.live = mac, ifname, state, True
        self.since = time.time()


class NeighbourMap:
    """The current map; ``start()`` reads the kernel table and follows it (when ``refresh``)."""

    def __init__(self, neighbours, refresh=True, on_change=None, resync_s=DEFAULT_RESYNC_S,
                 own_macs=()):
        self._lock = threading.Lock()
        # one publication at a time, in order: two threads (the follower, SIGHUP) that each saw a
        # change must not hand the pipeline the older map last
        self._publishing = threading.Lock()
        self._neighbours = tuple(neighbours)
        self._refresh = refresh
        self._on_change = on_change
        self.resync_s = float(resync_s)
        self._own = frozenset(own_macs)
        self._learned = {}              # (ip, ifindex) -> _Learned, for the configured IPs
        self._contradicted = set()      # (ip, kernel MAC) already logged against a configured mac
        self._sent = None
        self._events = None
        self._thread = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._next_resync = None
        # what the follower did (status and metrics)
        self.events_seen = 0            # neighbour and link messages received
        self.resyncs = 0                # periodic reads of the kernel table
        self.resync_repairs = 0         # ... that changed the map: an event had been missed
        self.event_errors = 0           # event socket errors, overruns included
        self.overruns = 0               # the kernel dropped events (ENOBUFS): table read again
        self.mac_changes = 0            # a learned neighbour's MAC replaced by another

    # -- state ----------------------------------------------------------------------------------

    def current(self):
        """``{mac: node_id}`` now."""
        return {mac: nid for mac, (nid, _) in self.bindings().items()}

    def bindings(self):
        """``{mac: (node_id, interfaces or None)}`` now."""
        with self._lock:
            return compute_map(self._neighbours, self._kernel_view())

    def _kernel_view(self):
        """``{ip: {ifname: mac}}`` of what was learned (live or kept), the lock held."""
        view = {}
        for (ip, ifindex), e in self._learned.items():
            name = _ifname(ifindex) or e.ifname
            e.ifname = name
            view.setdefault(ip, {})[name] = e.mac
        return view

    def _wanted(self):
        """``{ip: [(index, neighbour)]}`` of the configured neighbours given by an ip."""
        out = {}
        for i, n in enumerate(self._neighbours):
            if n.ip is not None:
                out.setdefault(n.ip, []).append((i, n))
        return out

    def status(self):
        """What ``beatd status`` shows of the neighbours given by their ip: each learned MAC and
        whether the kernel still has it, the ones with no MAC yet, and the follower's counters."""
        with self._lock:
            wanted = self._wanted()
            learned = []
            for (ip, ifindex), e in sorted(self._learned.items(), key=lambda kv: kv[0]):
                for _, n in wanted.get(ip, ()):
                    if n.mac is None:
                        learned.append({"node_id": n.node_id, "ip": ip,
                                        "interface": _ifname(ifindex) or e.ifname,
                                        "mac": _mac(e.mac),
                                        "kernel": nl.state_name(e.state) if e.live else
                                        "gone: last known MAC kept",
                                        "since": round(e.since, 3)})
            have = {ip for ip, _ in self._learned}
            missing = [{"node_id": n.node_id, "ip": ip} for ip, lst in sorted(wanted.items())
                       for _, n in lst if n.mac is None and ip not in have]
        return {"follow": self._refresh, "resync_s": self.resync_s if self._refresh else None,
                "learned": learned, "missing": missing, "events": self.events_seen,
                "resyncs": self.resyncs, "resync_repairs": self.resync_repairs,
                "event_errors": self.event_errors, "overruns": self.overruns,
                "mac_changes": self.mac_changes}

    def _publish(self, reason):
        with self._publishing:
            with self._lock:
                m = compute_map(self._neighbours, self._kernel_view())
                if m == self._sent:
                    return False
                self._sent = m
            event(log, logging.INFO, "neighbour map", reason=reason, size=len(m),
                  map={_mac(mac): nid for mac, (nid, _) in m.items()},
                  interfaces={_mac(mac): list(ifs) if ifs is not None else "any"
                              for mac, (_, ifs) in m.items()})
            if self._on_change is not None:
                self._on_change(dict(m))
            return True

    def set_config(self, neighbours):
        """New configured neighbours (SIGHUP); returns whether the map changed. What was learned
        for an IP whose neighbour entry changed (or went) is forgotten."""
        with self._lock:
            old = {(n.ip, n.node_id, n.mac, n.interface) for n in self._neighbours}
            self._neighbours = tuple(neighbours)
            keep = {n.ip for n in self._neighbours if n.ip is not None
                    and (n.ip, n.node_id, n.mac, n.interface) in old}
            for key in [k for k in self._learned if k[0] not in keep]:
                del self._learned[key]
            self._contradicted.clear()
        return self._publish("configuration")

    # -- the kernel's table ---------------------------------------------------------------------

    def _learn(self, entries, full=False):
        """Entries of the kernel's table (events, or a whole dump when ``full``) into what was
        learned, the lock held; returns the log lines to write once it is released."""
        lines = []
        wanted = self._wanted()
        seen = set()
        for e in entries:
            if not isinstance(e, nl.NeighEntry):
                continue
            ip = _norm_ip(e.ip)
            confs = wanted.get(ip)
            if not confs:
                continue
            key = (ip, e.ifindex)
            mac = nl.usable_mac(e)
            if mac is not None and mac in self._own:
                mac = None              # the device's own MAC is never a neighbour's
            by_ip = [n for _, n in confs if n.mac is None]
            for i, n in confs:
                if n.mac is not None and mac is not None and mac != n.mac and \
                        (ip, mac) not in self._contradicted:
                    self._contradicted.add((ip, mac))
                    lines.append((logging.WARNING, "a neighbour's configured mac contradicts the "
                                  "kernel's neighbour table for its ip: the configured mac is "
                                  "used; check the configuration (or who answers for that ip)",
                                  {"neighbour": f"neighbours[{i}]", "node_id": n.node_id, "ip": ip,
                                   "mac": _mac(n.mac), "kernel_mac": _mac(mac),
                                   "interface": _ifname(e.ifindex) or f"#{e.ifindex}"}))
            if not by_ip:
                continue
            seen.add(key)
            old = self._learned.get(key)
            node = by_ip[0].node_id
            ifname = _ifname(e.ifindex) or (old.ifname if old else f"#{e.ifindex}")
            if mac is not None:
                if old is None:
                    self._learned[key] = _Learned(mac, ifname, e.state)
                    lines.append((logging.INFO, "neighbour's MAC learned from the kernel's "
                                  "neighbour table", {"node_id": node, "ip": ip, "mac": _mac(mac),
                                                      "interface": ifname,
                                                      "state": nl.state_name(e.state)}))
                elif old.mac != mac:
                    self.mac_changes += 1
                    lines.append((logging.WARNING, "neighbour's MAC changed in the kernel's "
                                  "neighbour table: its frames are named by the new MAC from now",
                                  {"node_id": node, "ip": ip, "interface": ifname,
                                   "old_mac": _mac(old.mac), "mac": _mac(mac),
                                   "state": nl.state_name(e.state)}))
                    self._learned[key] = _Learned(mac, ifname, e.state)
                else:
                    if not old.live:
                        lines.append((logging.INFO, "neighbour's kernel entry back, same MAC",
                                      {"node_id": node, "ip": ip, "mac": _mac(mac),
                                       "interface": ifname, "state": nl.state_name(e.state)}))
                    old.state, old.live, old.ifname = e.state, True, ifname
            elif old is not None:
                if old.live:
                    lines.append((logging.INFO, "neighbour's kernel entry gone or unresolved "
                                  "(flush, link down, no answer): its last known MAC is kept "
                                  "until the kernel learns another",
                                  {"node_id": node, "ip": ip, "mac": _mac(old.mac),
                                   "interface": ifname,
                                   "kernel": "deleted" if e.deleted else nl.state_name(e.state)}))
                old.state, old.live = (0 if e.deleted else e.state), False
        if full:
            for key, old in self._learned.items():
                if key not in seen and old.live:
                    old.state, old.live = 0, False
        return lines

    def _apply(self, entries, reason, full=False):
        """Learn ``entries`` and publish the map when it changed; returns whether it did."""
        with self._lock:
            lines = self._learn(entries, full)
        for level, msg, fields in lines:
            event(log, level, msg, **fields)
        return self._publish(reason)

    def _forget_link(self, ifindex):
        """An interface was deleted: what was learned on it goes."""
        with self._lock:
            gone = [k for k in self._learned if k[1] == ifindex]
            for k in gone:
                e = self._learned.pop(k)
                event(log, logging.INFO, "neighbour's interface deleted: its MAC there is "
                      "forgotten", ip=k[0], mac=_mac(e.mac), interface=e.ifname)
        return bool(gone) and self._publish("interface deleted")

    def _read_table(self):
        try:
            return nl.dump()
        except OSError as exc:
            event(log, logging.WARNING, "cannot read the kernel's neighbour table",
                  error=exc.strerror or str(exc))
            return None

    def reload_kernel(self):
        """Read the kernel's neighbour table again; returns whether the map changed."""
        if not self._refresh:
            return self._publish("configuration")
        entries = self._read_table()
        if entries is None:
            return self._publish("configuration")
        return self._apply(entries, "kernel table", full=True)

    def resync(self):
        """The periodic re-read of the kernel's table: a change of the map means an event was
        missed (logged and counted); returns whether it changed."""
        entries = self._read_table()
        self.resyncs += 1
        if entries is None:
            return False
        changed = self._apply(entries, "re-sync with the kernel table", full=True)
        if changed:
            self.resync_repairs += 1
            event(log, logging.WARNING, "neighbour re-sync: the map was behind the kernel's "
                  "neighbour table (an event was missed); repaired", repairs=self.resync_repairs)
        return changed

    def _log_missing(self):
        with self._lock:
            have = {ip for ip, _ in self._learned}
            missing = [(n.node_id, n.ip) for n in self._neighbours
                       if n.mac is None and n.ip is not None and n.ip not in have]
        for nid, ip in missing:
            event(log, logging.WARNING, "neighbour given by its ip has no MAC in the kernel's "
                  "neighbour table yet: its frames are recorded as from (or to) outside until "
                  "the kernel learns it (traffic to it makes the kernel resolve it)",
                  node_id=nid, ip=ip)

    # -- netlink events -------------------------------------------------------------------------

    def start(self):
        """Read the kernel table and, with refresh on, follow its changes in a thread (events,
        and a re-read every ``resync_s``)."""
        self._stop.clear()
        if not self._refresh:
            self._publish("configuration")
            return
        try:
            # bound before the table is read: a change in between is an event, not lost
            self._events = nl.EventSocket()
        except OSError as exc:
            event(log, logging.WARNING, "cannot follow the kernel's neighbour table: it is read "
                  "at start, on SIGHUP and every daemon.neighbour_resync_s only",
                  error=exc.strerror or str(exc))
            self._events = None
        self.reload_kernel()
        self._log_missing()
        self._next_resync = time.monotonic() + self.resync_s
        self._thread = threading.Thread(target=self._follow, name="beatd-neighbours", daemon=True)
        self._thread.start()

    def _follow(self):
        poller = None
        if self._events is not None:
            poller = select.poll()
            poller.register(self._events.fileno(), select.POLLIN)
        while not self._stop.is_set():
            wait_ms = max(0, min(100, int((self._next_resync - time.monotonic()) * 1000)))
            if poller is None:
                self._stop.wait(wait_ms / 1000)
            else:
                try:
                    ready = poller.poll(wait_ms)
                    while ready and not self._stop.is_set():
                        msgs = self._events.read()
                        if not msgs:
                            break
                        self._on_events(msgs)
                except nl.Overrun as exc:
                    self.overruns += 1
                    self.event_errors += 1
                    event(log, logging.WARNING, "neighbour events lost (the kernel's event queue "
                          "overran): reading its neighbour table again", error=str(exc),
                          overruns=self.overruns)
                    self.reload_kernel()
                except Exception as exc:  # noqa: BLE001 (a netlink hiccup must not end the daemon)
                    if self._stop.is_set():
                        break
                    self.event_errors += 1
                    event(log, logging.WARNING, "neighbour events: cannot read them now; the "
                          "kernel table is read again", error=repr(exc))
                    self._stop.wait(1.0)
                    self.reload_kernel()
            if time.monotonic() >= self._next_resync and not self._stop.is_set():
                self._next_resync = time.monotonic() + self.resync_s
                try:
                    self.resync()
                except Exception as exc:  # noqa: BLE001
                    event(log, logging.WARNING, "neighbour re-sync failed", error=repr(exc))
        if self._events is not None:
            try:
                self._events.close()
            except Exception:  # noqa: BLE001
                pass
            self._events = None

    def _on_events(self, msgs):
        """The messages of one netlink datagram (the follower thread)."""
        self.events_seen += len(msgs)
        for m in msgs:
            if isinstance(m, nl.LinkEvent) and m.deleted:
                self._forget_link(m.ifindex)
        entries = [m for m in msgs if isinstance(m, nl.NeighEntry)]
        if entries:
            self._apply(entries, "netlink event")

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        elif self._events is not None:
            self._events.close()
            self._events = None
