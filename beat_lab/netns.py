"""The lab's network: one namespace per node, veth pairs, addresses, MACs and static routes.

Everything happens inside namespaces named ``<prefix><node>`` (``beat-r1`` ...); the host's own
namespace is never touched (veth pairs are created directly inside their namespaces). Interface
``to-<peer>`` of node X is X's end of the link to ``peer``. MACs are deterministic and locally
administered: ``02:be:<prefix tag>:<node index>:<link index>:00``.

Routing: every router reaches every host's prefixes (its link subnet and its site) along the agreed
path if it is on it, along the detour if it is inside the detour, else along a shortest path; hosts
have a default route through their router. ``route_via`` moves a route mid-run. Neighbour entries
are permanent (no ARP on the wire), IPv6 is off, rp_filter is off.

Management network (``create_management``, for ``beat-lab up --ledger ethereum``): one more
namespace ``<prefix>ledger`` holding the JSON-RPC node, a veth from it to every router (``m-<router>``
on the ledger side, ``mgmt`` in the router) on its own ``10.N.0.0/16`` (``management_subnet``: the
first of 10.199, 10.198, ... that overlaps no lab link nor site; router i's link is
``10.N.<i+1>.0/24``, ledger side ``.1``, router side ``.2``). The node listens on
``10.N.0.1`` (``ledger_address``, a /32 on the ledger namespace's loopback); each router has one
/32 route to it over ``mgmt`` and nothing else: no tenant prefix is routed there, the routers do not
forward what arrives on ``mgmt`` and the ledger namespace forwards nothing.
"""
import collections
import ipaddress
import os
import subprocess
import zlib

from .topology import Topology

__all__ = ["Net", "NetError", "IP"]

IP = "ip"
MGMT_IF = "mgmt"
LEDGER_NS = "ledger"


class NetError(Exception):
    """A namespace command failed; the message names the command and what it printed."""


def _run(argv, check=True, input=None, timeout=30):
    p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise NetError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def list_namespaces():
    out = _run([IP, "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns):
    p = _run([IP, "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


class Net:
    """The namespaces, links and routes of one topology under one namespace prefix."""

    def __init__(self, topo: Topology, prefix="beat-"):
        if not prefix or len(prefix) > 20 or "/" in prefix:
            raise ValueError(f"prefix: {prefix!r} is not a namespace prefix")
        self.topo = topo
        self.prefix = prefix
        self.tag = zlib.crc32(prefix.encode()) & 0xFF

    # ------------------------------------------------------------------ names and addresses
    def ns(self, node):
        self.topo.node(node)
        return f"{self.prefix}{node}"

    def namespaces(self):
        return [self.ns(n) for n in self.topo.nodes]

    @staticmethod
    def ifname(node, peer):
        name = f"to-{peer}"
        assert len(name) <= 15
        return name

    def mac(self, node, link):
        n = self.topo.node(node)
        return f"02:be:{self.tag:02x}:{n.index:02x}:{link.index:02x}:00"

    def interfaces(self, node):
        """[(ifname, mac, address, link)] of ``node``."""
        return [(self.ifname(node, l.peer(node)), self.mac(node, l), l.addr(node), l)
                for l in self.topo.links_of(node)]

    def own_macs(self, node):
        return [mac for _, mac, _, _ in self.interfaces(node)]

    def neighbour_routers(self, router):
        """[(node_id, mac, ip, interface)] of the routers adjacent to ``router`` (hosts are
        outside); ``interface``: ``router``'s own interface on that link (the only one where the
        neighbour's MAC names it)."""
        out = []
        for l in self.topo.links_of(router):
            peer = self.topo.node(l.peer(router))
            if peer.kind == "router":
                out.append((peer.node_id, self.mac(peer.name, l), str(l.addr(peer.name)),
                            self.ifname(router, peer.name)))
        return out

    # ------------------------------------------------------------------ commands
    def exec_argv(self, node, argv):
        return [IP, "netns", "exec", self.ns(node)] + list(argv)

    def run(self, node, argv, check=True, timeout=30, input=None):
        return _run(self.exec_argv(node, argv), check=check, timeout=timeout, input=input)

    def _batch(self, node, lines):
        """Run ``ip`` commands in ``node``'s namespace (one ``ip -batch`` process)."""
        if lines:
            _run([IP, "-n", self.ns(node), "-batch", "-"], input="\n".join(lines) + "\n")

    # ------------------------------------------------------------------ routing plan
    def _shortest_next(self, start, goal):
        """First hop from ``start`` to ``goal`` over routers (hosts do not transit); BFS."""
        topo = self.topo
        prev = {start: None}
        q = collections.deque([start])
        while q:
            x = q.popleft()
            if x == goal:
                break
            for y in sorted(topo.neighbours(x)):
                if y in prev:
                    continue
                if topo.node(y).kind == "host" and y != goal:
                    continue
                prev[y] = x
                q.append(y)
        if goal not in prev:
            return None
        x = goal
        while prev[x] != start:
            x = prev[x]
        return x

    def route_plan(self):
        """{router: {prefix: next_hop_node}} for the prefixes not directly connected."""
        topo = self.topo
        hops = (topo.src,) + topo.agreed + (topo.dst,)
        plan = {}
        for r in topo.routers:
            name = r.name
            direct = {l.network for l in topo.links_of(name)}
            routes = {}
            for l in topo.links:            # every link subnet, shortest path
                if l.network in direct:
                    continue
                cand = [self._shortest_next(name, e) for e in l.ends()]
                cand = [c for c in cand if c]
                if cand:
                    routes[l.network] = cand[0]
            for h in topo.hosts:            # host prefixes (link subnet + site)
                nxt = self._shortest_next(name, h.name)
                if name in topo.detour[1:-1]:
                    i = topo.detour.index(name)
                    if h.name == topo.dst:
                        nxt = topo.detour[i + 1]
                    elif h.name == topo.src:
                        nxt = topo.detour[i - 1]
                if name in topo.agreed:
                    i = hops.index(name)
                    if h.name == topo.dst:
                        nxt = hops[i + 1]
                    elif h.name == topo.src:
                        nxt = hops[i - 1]
                if nxt is None:
                    continue
                for pfx in topo.prefixes(h.name):
                    if pfx not in direct:
                        routes[pfx] = nxt
            plan[name] = routes
        return plan

    # ------------------------------------------------------------------ life cycle
    def create(self):
        """Create every namespace, link, address, route; raises NetError (and leaves a partial
        lab: call ``destroy``)."""
        topo = self.topo
        for ns in self.namespaces():
            _run([IP, "netns", "add", ns])
        for l in topo.links:
            a, b = l.a, l.b
            _run([IP, "link", "add", self.ifname(a, b), "address", self.mac(a, l), "netns",
                  self.ns(a), "type", "veth", "peer", "name", self.ifname(b, a), "address",
                  self.mac(b, l), "netns", self.ns(b)])
        sysctls = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                   "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        for node in topo.nodes.values():
            if node.kind == "router":
                extra = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                         "net.ipv4.conf.default.send_redirects=0"]
            else:
                # no ICMP errors from hosts (port unreachable for the test packets would be
                # reverse traffic that the routers record): a zero burst allows none
                extra = ["net.ipv4.ip_forward=0", "net.ipv4.icmp_msgs_burst=0",
                         "net.ipv4.icmp_msgs_per_sec=0"]
            self.run(node.name, ["sysctl", "-q", "-w", *sysctls, *extra])
            lines = ["link set lo up"]
            for ifname, _mac, addr, l in self.interfaces(node.name):
                lines.append(f"addr add {addr}/{l.network.prefixlen} dev {ifname}")
                lines.append(f"link set {ifname} up")
                peer = l.peer(node.name)
                lines.append(f"neigh replace {l.addr(peer)} lladdr {self.mac(peer, l)} "
                             f"dev {ifname} nud permanent")
            if node.kind == "host":
                l = topo.host_link(node.name)
                lines.append(f"route add default via {l.addr(l.peer(node.name))}")
            self._batch(node.name, lines)
            if node.kind == "host":
                # rp_filter per interface too (the sysctl "all" is a max with the interface's)
                for ifname, *_ in self.interfaces(node.name):
                    self.run(node.name, ["sysctl", "-q", "-w",
                                         f"net.ipv4.conf.{ifname}.rp_filter=0"])
        for router, routes in self.route_plan().items():
            self._batch(router, [self._route_line(router, pfx, nxt) for pfx, nxt in
                                 sorted(routes.items(), key=lambda kv: str(kv[0]))])

    def _route_line(self, router, prefix, next_hop):
        l = self.topo.link_between(router, next_hop)
        if l is None:
            raise NetError(f"route_via: {router} and {next_hop} are not linked")
        return (f"route replace {ipaddress.ip_network(prefix)} via {l.addr(next_hop)} "
                f"dev {self.ifname(router, next_hop)}")

    def route_via(self, router, dst, next_hop):
        """Point ``router``'s route for ``dst`` at ``next_hop`` (a linked node). ``dst`` is a
        prefix ("10.77.4.0/24") or a host name (all of its prefixes: link subnet and site)."""
        if self.topo.node(router).kind != "router":
            raise NetError(f"route_via: {router} is not a router")
        if dst in self.topo.nodes:
            prefixes = self.topo.prefixes(dst)
        else:
            prefixes = [ipaddress.ip_network(dst)]
        self._batch(router, [self._route_line(router, p, next_hop) for p in prefixes])

    def route_get(self, router, addr):
        """The next-hop interface ``router`` uses for ``addr`` now (``to-<peer>``)."""
        out = _run([IP, "-n", self.ns(router), "-o", "route", "get", str(addr)]).stdout
        parts = out.split()
        return parts[parts.index("dev") + 1] if "dev" in parts else None

    # ------------------------------------------------------------------ management network
    @property
    def ledger_ns(self):
        if LEDGER_NS in self.topo.nodes:
            raise NetError(f"the topology has a node named {LEDGER_NS!r}: the management "
                           "namespace needs that name")
        return f"{self.prefix}{LEDGER_NS}"

    def management_subnet(self):
        used = [l.network for l in self.topo.links] + list(self.topo.sites.values())
        for n in range(199, 0, -1):
            net = ipaddress.IPv4Network(f"10.{n}.0.0/16")
            if not any(net.overlaps(u) for u in used):
                return net
        raise NetError("no free 10.N.0.0/16 for the management network")

    def ledger_address(self):
        return self.management_subnet().network_address + 1

    def management_links(self):
        """[(router, ledger-side ifname, ledger-side address, router address, network)]."""
        base = self.management_subnet().network_address
        out = []
        for i, r in enumerate(self.topo.routers):
            if i >= 254:
                raise NetError("more than 254 routers: no room on the management network")
            net = ipaddress.IPv4Network((int(base) + ((i + 1) << 8), 24))
            ifname = f"m-{r.name}" if len(f"m-{r.name}") <= 15 else f"m{i}"
            out.append((r.name, ifname, net.network_address + 1, net.network_address + 2, net))
        return out

    def _mgmt_mac(self, i, side):
        return f"02:bf:{self.tag:02x}:{i + 1:02x}:00:{side:02x}"

    def create_management(self):
        """The ledger namespace and its management veth to every router (see the module doc)."""
        ns = self.ledger_ns
        _run([IP, "netns", "add", ns])
        _run([IP, "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
              "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.ip_forward=0"])
        ledger_lines = ["link set lo up", f"addr add {self.ledger_address()}/32 dev lo"]
        for i, (router, lif, laddr, raddr, net) in enumerate(self.management_links()):
            lmac, rmac = self._mgmt_mac(i, 1), self._mgmt_mac(i, 2)
            _run([IP, "link", "add", lif, "address", lmac, "netns", ns, "type", "veth", "peer",
                  "name", MGMT_IF, "address", rmac, "netns", self.ns(router)])
            ledger_lines += [f"addr add {laddr}/{net.prefixlen} dev {lif}", f"link set {lif} up",
                             f"neigh replace {raddr} lladdr {rmac} dev {lif} nud permanent"]
            self._batch(router, [f"addr add {raddr}/{net.prefixlen} dev {MGMT_IF}",
                                 f"link set {MGMT_IF} up",
                                 f"neigh replace {laddr} lladdr {lmac} dev {MGMT_IF} nud permanent",
                                 f"route add {self.ledger_address()}/32 via {laddr} dev {MGMT_IF}"])
            # nothing that arrives on mgmt is forwarded by the router
            self.run(router, ["sysctl", "-q", "-w", f"net.ipv4.conf.{MGMT_IF}.forwarding=0"])
        _run([IP, "-n", ns, "-batch", "-"], input="\n".join(ledger_lines) + "\n")
        return ns

    def exists(self):
        have = set(list_namespaces())
        return [ns for ns in self.namespaces() if ns in have]

    def destroy(self, extra_namespaces=()):
        """Kill what still runs inside our namespaces (by pid), delete them. Idempotent."""
        have = set(list_namespaces())
        targets = [ns for ns in list(self.namespaces()) + list(extra_namespaces) if ns in have]
        for ns in targets:
            for pid in namespace_pids(ns):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        for ns in targets:
            # deleting a namespace deletes its veth ends (and so the peers)
            _run([IP, "netns", "del", ns], check=False)
        return targets


def management_stats(net):
    """{router: {"rx": packets, "tx": packets}} of the ledger side of each management link, and
    the ledger namespace's protocol counters (``/proc/net/snmp``: {"Ip": {...}, "Udp": {...},
    ...}) under the key ``"snmp"``."""
    import json

    ns = net.ledger_ns
    out = _run([IP, "-n", ns, "-j", "-s", "link", "show"]).stdout
    by_if = {}
    for dev in json.loads(out):
        s = dev.get("stats64") or dev.get("stats") or {}
        by_if[dev.get("ifname")] = {"rx": s.get("rx", {}).get("packets", 0),
                                    "tx": s.get("tx", {}).get("packets", 0)}
    stats = {r: by_if.get(lif, {"rx": 0, "tx": 0}) for r, lif, *_ in net.management_links()}
    lines = _run([IP, "netns", "exec", ns, "cat", "/proc/net/snmp"]).stdout.splitlines()
    snmp = {}
    for head, vals in zip(lines[0::2], lines[1::2]):
        proto, names = head.split(":", 1)
        snmp[proto] = dict(zip(names.split(), (int(v) for v in vals.split(":", 1)[1].split())))
    stats["snmp"] = snmp
    return stats


def link_stats(net, node):
    """{ifname: {"rx": packets, "tx": packets}} of ``node``'s lab interfaces (kernel counters)."""
    import json

    out = _run([IP, "-n", net.ns(node), "-j", "-s", "link", "show"]).stdout
    stats = {}
    for dev in json.loads(out):
        if dev.get("ifname", "").startswith("to-"):
            s = dev.get("stats64") or dev.get("stats") or {}
            stats[dev["ifname"]] = {"rx": s.get("rx", {}).get("packets", 0),
                                    "tx": s.get("tx", {}).get("packets", 0)}
    return stats
