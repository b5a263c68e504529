"""Lab topology files (TOML): hosts, routers with node ids and owners, links, the agreed path and
a detour.

The format is described in ``beat_lab/topologies/README.md``. ``load(path)`` /
``from_dict(raw)`` return a validated ``Topology``; anything wrong raises ``TopologyError`` whose
message names the key, e.g. ``links[2].b: "r9" is not a host or router``.

Addressing is derived, never written by hand: link ``i`` (0-based, in file order) gets the subnet
``<subnet>.<i+1>.0/24`` (side ``a`` is ``.1``, side ``b`` is ``.2``), and host ``j`` gets a routed
"site" prefix ``10.<site_base + j>.0.0/16`` behind it, from which the load generator draws its many
source and destination addresses. Every address lives inside the lab's namespaces only.
"""
import dataclasses
import ipaddress
import re

from beat_common.spec import NODE_ID_MAX
from beat_common.tomlfile import read_toml

__all__ = ["TopologyError", "Topology", "Node", "Link", "load", "from_dict", "MAX_ROUTERS"]

MAX_ROUTERS = 10
MAX_HOSTS = 8
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
MAX_OWNER = 64
DEFAULT_OWNER = "operator-{name}"   # one owner per router unless the file groups them


class TopologyError(Exception):
    """A topology value is wrong; the message names the key and the value."""


def _show(v):
    return f'"{v}"' if isinstance(v, str) else repr(v)


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    kind: str               # "host" | "router"
    index: int              # position among all nodes (hosts first, then routers), for MACs
    node_id: int = 0        # routers only; hosts are outside BEAT (0)
    owner: str = ""         # routers only: the operator registered with it on the ledger


@dataclasses.dataclass(frozen=True)
class Link:
    index: int
    a: str
    b: str
    network: ipaddress.IPv4Network

    def addr(self, node):
        """The /24 interface address of ``node`` on this link (``a`` is .1, ``b`` is .2)."""
        if node == self.a:
            return self.network.network_address + 1
        if node == self.b:
            return self.network.network_address + 2
        raise KeyError(node)

    def peer(self, node):
        if node == self.a:
            return self.b
        if node == self.b:
            return self.a
        raise KeyError(node)

    def ends(self):
        return (self.a, self.b)


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    hosts: tuple            # of Node
    routers: tuple          # of Node
    links: tuple            # of Link
    src: str                # the tenant's flow: src host -> dst host
    dst: str
    agreed: tuple           # router names, from the src side to the dst side
    detour: tuple           # router names: starts and ends on the agreed path (may be empty)
    sites: dict             # host name -> IPv4Network (routed prefix behind the host)

    @property
    def nodes(self):
        return {n.name: n for n in self.hosts + self.routers}

    def node(self, name):
        return self.nodes[name]

    def links_of(self, name):
        return [l for l in self.links if name in l.ends()]

    def link_between(self, x, y):
        for l in self.links:
            if set(l.ends()) == {x, y}:
                return l
        return None

    def neighbours(self, name):
        return [l.peer(name) for l in self.links_of(name)]

    def host_link(self, host):
        return self.links_of(host)[0]

    def host_addr(self, host):
        return self.host_link(host).addr(host)

    def prefixes(self, host):
        """The prefixes reached through ``host``: its link subnet and its site."""
        return [self.host_link(host).network, self.sites[host]]

    def router_ids(self):
        return {r.name: r.node_id for r in self.routers}

    def owners(self):
        """{router name: owner}."""
        return {r.name: r.owner for r in self.routers}

    def router_links(self):
        """The links between two routers (host links are outside BEAT), in file order."""
        kinds = {n.name: n.kind for n in self.hosts + self.routers}
        return [l for l in self.links if kinds[l.a] == kinds[l.b] == "router"]

    def router_link_ids(self):
        """The router-router links as node id pairs (a, b), a < b, sorted: the topology the
        governance registers on the ledger."""
        ids = self.router_ids()
        return sorted(tuple(sorted((ids[l.a], ids[l.b]))) for l in self.router_links())


def _req(table, key, prefix):
    if key not in table:
        raise TopologyError(f"{prefix}{key}: missing")
    return table[key]


def _known(table, known, prefix):
    if not isinstance(table, dict):
        raise TopologyError(f"{prefix.rstrip('.') or 'topology'}: {_show(table)} is not a table")
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise TopologyError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")


def _name(v, key):
    if not isinstance(v, str) or not _NAME_RE.match(v):
        raise TopologyError(f"{key}: {_show(v)} is not a node name (a lowercase letter, then up to "
                            "7 lowercase letters or digits)")
    return v


def _array(top, key, prefix=""):
    v = top.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise TopologyError(f"{prefix}{key}: {_show(v)} is not an array of tables")
    return v


def from_dict(raw):
    """A validated ``Topology`` from a parsed TOML document."""
    _known(raw, {"lab", "hosts", "routers", "links", "path"}, "")
    lab = raw.get("lab", {})
    _known(lab, {"name", "subnet", "site_base"}, "lab.")
    name = lab.get("name", "lab")
    if not isinstance(name, str) or not name:
        raise TopologyError(f"lab.name: {_show(name)} is not a name")
    subnet_s = lab.get("subnet", "10.77.0.0/16")
    try:
        subnet = ipaddress.IPv4Network(subnet_s)
    except (ValueError, TypeError):
        raise TopologyError(f"lab.subnet: {_show(subnet_s)} is not an IPv4 network") from None
    if subnet.prefixlen != 16 or not subnet.subnet_of(ipaddress.IPv4Network("10.0.0.0/8")):
        raise TopologyError(f"lab.subnet: {_show(subnet_s)} must be a /16 inside 10.0.0.0/8")
    site_base = lab.get("site_base", 200)
    if isinstance(site_base, bool) or not isinstance(site_base, int) or not 0 <= site_base <= 255:
        raise TopologyError(f"lab.site_base: {_show(site_base)} is not an integer in 0..255")

    seen = {}
    hosts = []
    for i, h in enumerate(_array(raw, "hosts")):
        p = f"hosts[{i}]."
        _known(h, {"name"}, p)
        n = _name(_req(h, "name", p), p + "name")
        if n in seen:
            raise TopologyError(f"{p}name: {_show(n)} is already {seen[n]}")
        seen[n] = f"hosts[{i}].name"
        hosts.append(n)
    if len(hosts) < 2:
        raise TopologyError(f"hosts: {len(hosts)} given, at least 2 needed")
    if len(hosts) > MAX_HOSTS:
        raise TopologyError(f"hosts: {len(hosts)} given, at most {MAX_HOSTS}")
    if site_base + len(hosts) > 256:
        raise TopologyError(f"lab.site_base: {site_base} leaves no room for {len(hosts)} sites")

    routers = []
    ids = {}
    for i, r in enumerate(_array(raw, "routers")):
        p = f"routers[{i}]."
        _known(r, {"name", "node_id", "owner"}, p)
        n = _name(_req(r, "name", p), p + "name")
        if n in seen:
            raise TopologyError(f"{p}name: {_show(n)} is already {seen[n]}")
        seen[n] = f"routers[{i}].name"
        nid = _req(r, "node_id", p)
        if isinstance(nid, bool) or not isinstance(nid, int) or not 1 <= nid <= NODE_ID_MAX:
            raise TopologyError(f"{p}node_id: {_show(nid)} is not a node id (an integer in "
                                "1..2^64-2)")
        if nid in ids:
            raise TopologyError(f"{p}node_id: {nid} is already the node id of {ids[nid]}")
        ids[nid] = n
        owner = r.get("owner", DEFAULT_OWNER.format(name=n))
        if (not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER
                or not owner.isprintable() or owner != owner.strip()):
            raise TopologyError(f"{p}owner: {_show(owner)} is not an owner (1 to {MAX_OWNER} "
                                "printable characters, no space at either end)")
        routers.append((n, nid, owner))
    if not routers:
        raise TopologyError("routers: none given")
    if len(routers) > MAX_ROUTERS:
        raise TopologyError(f"routers: {len(routers)} given, at most {MAX_ROUTERS}")

    nodes = [Node(h, "host", i) for i, h in enumerate(hosts)]
    nodes += [Node(n, "router", len(hosts) + i, nid, owner)
              for i, (n, nid, owner) in enumerate(routers)]
    by_name = {n.name: n for n in nodes}

    links = []
    pairs = {}
    raw_links = _array(raw, "links")
    if len(raw_links) > 250:
        raise TopologyError(f"links: {len(raw_links)} given, at most 250")
    for i, l in enumerate(raw_links):
        p = f"links[{i}]."
        _known(l, {"a", "b"}, p)
        ends = []
        for side in ("a", "b"):
            v = _req(l, side, p)
            if v not in by_name:
                raise TopologyError(f"{p}{side}: {_show(v)} is not a host or router")
            ends.append(v)
        a, b = ends
        if a == b:
            raise TopologyError(f"{p}b: {_show(b)} links {_show(a)} to itself")
        if by_name[a].kind == "host" and by_name[b].kind == "host":
            raise TopologyError(f"{p}b: {_show(b)} links two hosts; a host links to a router")
        key = frozenset((a, b))
        if key in pairs:
            raise TopologyError(f"{p}b: {a} and {b} are already linked by links[{pairs[key]}]")
        pairs[key] = i
        net = ipaddress.IPv4Network((int(subnet.network_address) + ((i + 1) << 8), 24))
        links.append(Link(i, a, b, net))
    for h in hosts:
        n = sum(1 for l in links if h in l.ends())
        if n != 1:
            raise TopologyError(f"hosts: {_show(h)} is on {n} links; a host is on exactly one")

    path = raw.get("path")
    if path is None:
        raise TopologyError("path: missing")
    _known(path, {"src", "dst", "agreed", "detour"}, "path.")
    src = _req(path, "src", "path.")
    dst = _req(path, "dst", "path.")
    for key, v in (("src", src), ("dst", dst)):
        if v not in by_name or by_name[v].kind != "host":
            raise TopologyError(f"path.{key}: {_show(v)} is not a host")
    if src == dst:
        raise TopologyError(f"path.dst: {_show(dst)} is also path.src")

    def route(key, optional):
        v = path.get(key, [] if optional else None)
        if v is None:
            raise TopologyError(f"path.{key}: missing")
        if not isinstance(v, list):
            raise TopologyError(f"path.{key}: {_show(v)} is not a list of router names")
        for j, r in enumerate(v):
            if r not in by_name or by_name[r].kind != "router":
                raise TopologyError(f"path.{key}[{j}]: {_show(r)} is not a router")
        if len(set(v)) != len(v):
            raise TopologyError(f"path.{key}: {_show(v)} visits a router twice")
        return tuple(v)

    agreed = route("agreed", False)
    if not agreed:
        raise TopologyError("path.agreed: empty")
    hops = (src,) + agreed + (dst,)
    for j in range(len(hops) - 1):
        if frozenset((hops[j], hops[j + 1])) not in pairs:
            key = "path.src" if j == 0 else f"path.agreed[{j - 1}]"
            raise TopologyError(f"{key}: {hops[j]} and {hops[j + 1]} are not linked "
                                "(the agreed path must follow links)")
    detour = route("detour", True)
    if detour:
        if len(detour) < 3:
            raise TopologyError(f"path.detour: {_show(list(detour))} needs at least 3 routers "
                                "(leave the agreed path, at least one router off it, rejoin)")
        if detour[0] not in agreed or detour[-1] not in agreed:
            raise TopologyError(f"path.detour: {_show(list(detour))} must start and end on "
                                "path.agreed")
        if agreed.index(detour[0]) >= agreed.index(detour[-1]):
            raise TopologyError(f"path.detour: {_show(list(detour))} must go the same way as "
                                "path.agreed")
        for j, r in enumerate(detour[1:-1], 1):
            if r in agreed:
                raise TopologyError(f"path.detour[{j}]: {_show(r)} is on path.agreed; a detour's "
                                    "inner routers are off the agreed path")
        for j in range(len(detour) - 1):
            if frozenset((detour[j], detour[j + 1])) not in pairs:
                raise TopologyError(f"path.detour[{j}]: {detour[j]} and {detour[j + 1]} are not "
                                    "linked")
    sites = {h: ipaddress.IPv4Network(f"10.{site_base + i}.0.0/16") for i, h in enumerate(hosts)}
    for h, s in sites.items():
        if s.overlaps(subnet):
            raise TopologyError(f"lab.site_base: {site_base} makes the site of {h} ({s}) overlap "
                                f"lab.subnet ({subnet})")
    return Topology(name=name, hosts=tuple(n for n in nodes if n.kind == "host"),
                    routers=tuple(n for n in nodes if n.kind == "router"), links=tuple(links),
                    src=src, dst=dst, agreed=agreed, detour=detour, sites=sites)


def load(path):
    """Read and validate the topology TOML at ``path``."""
    raw = read_toml(path, TopologyError, "topology")
    try:
        return from_dict(raw)
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from None
