"""The neighbour map the pipeline looks prev_id/next_id up in: ``{mac: (node_id, interfaces)}``,
``interfaces`` the names of the interfaces where that neighbour is (its MAC names it only on them;
a frame carrying it on another interface came from somewhere the device cannot name), or ``None``
for a neighbour named by its MAC on every interface.

It is made of the configuration's neighbours (their ``mac``, and ``interface``) and, with
``daemon.neighbour_refresh``, of the kernel's neighbour table (ARP/NDP, read with pyroute2's
IPRoute), which gives each entry's interface: a configured neighbour that gives an ``ip`` but no
``mac`` takes the MAC the kernel has for that IP, on the interface of the kernel's entry (or on its
configured ``interface``). A neighbour given by its ``mac`` without an ``interface`` is named by
that MAC on every interface (``beatd run`` warns about each). The table is read at start and on
``reload_kernel()`` (SIGHUP), and followed in a thread through netlink RTM_NEWNEIGH / RTM_DELNEIGH
events. A MAC given in the configuration always wins: a neighbour with a ``mac`` never takes the
kernel's, and a MAC learned from the kernel never displaces a configured one. ``on_change(map)`` is
called (from whichever thread saw the change) only when the map changes. ``pipeline_map(map,
slots)`` turns it into the pipeline's form (docs/fastpath.md "Neighbour ids").
"""
import ipaddress
import logging
import select
import socket
import threading

from .logs import event

__all__ = ["NeighbourMap", "compute_map", "kernel_table", "pipeline_map", "unbound"]

log = logging.getLogger("beatd.neighbours")

NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
_NO_MAC = bytes(6)


def _norm_ip(ip):
    try:
        return str(ipaddress.ip_address(str(ip).split("%")[0]))
    except ValueError:
        return None


def _ifname(ifindex):
    """The name of interface ``ifindex`` in this namespace (``"#N"`` when it has none now)."""
    try:
        return socket.if_indextoname(int(ifindex))
    except (OSError, TypeError, ValueError):
        return f"#{ifindex}"


def _entry(msg):
    """``(ip, ifname, mac or None)`` of one RTM_*NEIGH message; mac None when the entry has none
    (yet)."""
    ip = _norm_ip(msg.get("NDA_DST"))
    ifname = _ifname(msg.get("ifindex"))
    lladdr = msg.get("NDA_LLADDR")
    mac = None
    if lladdr and msg.get("state", 0) & (NUD_INCOMPLETE | NUD_FAILED) == 0:
        try:
            mac = bytes.fromhex(lladdr.replace(":", ""))
        except ValueError:
            mac = None
        if mac is not None and (len(mac) != 6 or mac == _NO_MAC):
            mac = None
    return ip, ifname, mac


def kernel_table(ipr):
    """``{ip: {ifname: mac}}`` of the kernel's neighbour table (entries with a usable MAC only)."""
    table = {}
    for msg in ipr.get_neighbours():
        ip, ifname, mac = _entry(msg)
        if ip is not None and mac is not None:
            table.setdefault(ip, {})[ifname] = mac
    return table


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


class NeighbourMap:
    """The current map; ``start()`` reads the kernel table and follows it (when ``refresh``)."""

    def __init__(self, neighbours, refresh=True, on_change=None):
        self._lock = threading.Lock()
        self._neighbours = tuple(neighbours)
        self._refresh = refresh
        self._on_change = on_change
        self._kernel = {}
        self._sent = None
        self._ipr = None
        self._events = None
        self._thread = None
        self._stop = threading.Event()
        self.events_seen = 0

    # -- state ----------------------------------------------------------------------------------

    def current(self):
        """``{mac: node_id}`` now."""
        return {mac: nid for mac, (nid, _) in self.bindings().items()}

    def bindings(self):
        """``{mac: (node_id, interfaces or None)}`` now."""
        with self._lock:
            return compute_map(self._neighbours, self._kernel)

    def _wanted_ips(self):
        return {n.ip for n in self._neighbours if n.ip is not None}

    def _publish(self, reason):
        with self._lock:
            m = compute_map(self._neighbours, self._kernel)
            if m == self._sent:
                return False
            self._sent = m
        event(log, logging.INFO, "neighbour map", reason=reason, size=len(m),
              map={":".join(f"{b:02x}" for b in mac): nid for mac, (nid, _) in m.items()},
              interfaces={":".join(f"{b:02x}" for b in mac): list(ifs) if ifs is not None
                          else "any" for mac, (_, ifs) in m.items()})
        if self._on_change is not None:
            self._on_change(dict(m))
        return True

    def set_config(self, neighbours):
        """New configured neighbours (SIGHUP); returns whether the map changed."""
        with self._lock:
            self._neighbours = tuple(neighbours)
        return self._publish("configuration")

    def reload_kernel(self):
        """Read the kernel's neighbour table again; returns whether the map changed."""
        if not self._refresh:
            return self._publish("configuration")
        from pyroute2 import IPRoute
        try:
            with IPRoute() as ipr:
                table = kernel_table(ipr)
        except OSError as exc:
            event(log, logging.WARNING, "cannot read the kernel's neighbour table",
                  error=str(exc))
            return False
        with self._lock:
            self._kernel = table
        return self._publish("kernel table")

    # -- netlink events -------------------------------------------------------------------------

    def start(self):
        """Read the kernel table and, with refresh on, follow its changes in a thread."""
        self._stop.clear()
        self.reload_kernel()
        if not self._refresh:
            return
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="beatd-neighbours", daemon=True)
        self._thread.start()
        self._ready.wait(2.0)

    def _follow(self):
        # pyroute2's sync IPRoute belongs to the thread that made it: make it here
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_NEIGH
        try:
            self._events = IPRoute()
            self._events.bind(groups=RTMGRP_NEIGH)
        except OSError as exc:
            event(log, logging.WARNING, "cannot follow the kernel's neighbour table",
                  error=str(exc))
            self._events = None
            return
        finally:
            self._ready.set()
        # a change between the table read in start() and the bind would be missed: read it again
        self.reload_kernel()
        poller = select.poll()
        poller.register(self._events.fileno(), select.POLLIN)
        while not self._stop.is_set():
            try:
                if not poller.poll(100):
                    continue
                msgs = self._events.get()
            except Exception as exc:  # noqa: BLE001 (a netlink hiccup must not end the daemon)
                if self._stop.is_set():
                    return
                event(log, logging.WARNING, "neighbour events", error=repr(exc))
                self._stop.wait(1.0)
                continue
            self._apply(msgs)
        try:
            self._events.close()
        except Exception:  # noqa: BLE001
            pass
        self._events = None

    def _apply(self, msgs):
        wanted = self._wanted_ips()
        changed = False
        with self._lock:
            for msg in msgs:
                kind = msg.get("event")
                if kind not in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
                    continue
                self.events_seen += 1
                ip, ifname, mac = _entry(msg)
                if ip not in wanted:
                    continue
                on = self._kernel.get(ip, {})
                if kind == "RTM_DELNEIGH" or mac is None:
                    changed |= on.pop(ifname, None) is not None
                    if not on:
                        self._kernel.pop(ip, None)
                elif on.get(ifname) != mac:
                    self._kernel.setdefault(ip, {})[ifname] = mac
                    changed = True
        if changed:
            self._publish("netlink event")

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
