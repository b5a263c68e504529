"""``beat-lab gns3``: the lab topology as a GNS3 project, and the BEAT images' appliance files.

    beat-lab gns3 project [--topology F] [--out DIR | --out FILE.gns3project] [--name NAME]
    beat-lab gns3 project [--topology F] --server URL [--user U] [--password P] [--name NAME]
    beat-lab gns3 appliances --out DIR

``project`` turns a lab topology (the format of ``beat-lab``, ``beat_lab/topologies/paper.toml`` by
default) into a GNS3 project: one Docker node per host and router, on the BEAT router image
(``ROUTER_IMAGE``; hosts run it with ``BEAT_ROLE=host``), one governance node on the governance
image (``GOVERNANCE_IMAGE``: the ledger's chain and ``beatctl``), a link per topology link between
the right adapters, and a management link from every router's last adapter to one adapter of the
governance node. Everything a node needs is in its environment (``gns3/README.md`` lists the
variables): addresses, deterministic MACs, neighbours, static routes (the lab's routing plan:
the agreed path, the detour), the ledger endpoint, the governance CA, and the lab's keys and
certificates, made here (a lab PKI as ``beat-lab``'s, a device key and an Ethereum account per
router, the governance's account). They are lab keys: anyone holding the project holds them.

Output: ``--out FILE.gns3project`` (the default is ``<name>.gns3project``) is the portable zip GNS3
exports and imports (``project.gns3`` inside); ``--out DIR`` writes ``DIR/<name>.gns3``, a project
directory GNS3 opens as it is. ``--server URL`` creates the project through the GNS3 server's REST
API (v3, token authentication): the templates of the BEAT images when missing, the nodes from
them, their names, positions and environments, the links; it prints the project id.

Addressing (as ``beat-lab``): topology link ``i`` is ``<subnet>.<i+1>.0/24``; the management
network is the lab's (``Net.management_subnet()``): router ``i``'s management link
``10.N.<i+1>.0/24`` (governance side ``.1``, router ``.2``), the chain on ``10.N.0.1:8545``, each
router's Interrogation service on ``<its management address>:9478``. Node ``k`` (hosts first, then
routers, then the governance) has the base MAC ``02:be:00:<k>:00:00``; GNS3 gives adapter ``a`` the
base plus ``a``, and the router entrypoint checks it.
"""
import argparse
import base64
import dataclasses
import io
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile

__all__ = ["ROUTER_IMAGE", "GOVERNANCE_IMAGE", "ROUTER_TEMPLATE", "GOVERNANCE_TEMPLATE",
           "GNS3Error", "Plan", "plan", "topology_json", "write_project", "appliances",
           "GNS3Client", "create_on_server", "add_arguments", "main"]

ROUTER_IMAGE = "beat-router:latest"
GOVERNANCE_IMAGE = "beat-governance:latest"
ROUTER_TEMPLATE = "BEAT router"
GOVERNANCE_TEMPLATE = "BEAT governance"
GOVERNANCE_NAME = "gov"
CHAIN_PORT = 8545
ANCHOR_PERIOD_S = 2.0
RING_SIZE = "64MiB"
GNS3_REVISION = 10                   # the .gns3 file format of GNS3 3.0
GNS3_VERSION = "3.0.6"
# fixed UUIDs of the two appliances (GNS3 keys appliances by appliance_id)
ROUTER_APPLIANCE_ID = "5b0c2f62-7a3e-4d51-9b4c-be0a70000001"
GOVERNANCE_APPLIANCE_ID = "5b0c2f62-7a3e-4d51-9b4c-be0a70000002"
_UUID_NS = uuid.UUID("5b0c2f62-7a3e-4d51-9b4c-be0a70000000")
EXIT_USAGE = 2
EXIT_SERVER = 1


class GNS3Error(Exception):
    """Something the project cannot be made or created from; the message says what."""


# ---------------------------------------------------------------------------------------------
# the plan: nodes, adapters, links, environments

@dataclasses.dataclass
class PlanNode:
    name: str
    kind: str                   # "host" | "router" | "governance"
    image: str
    adapters: int
    mac_base: str
    env: dict                   # ordered: the node's environment
    x: int = 0
    y: int = 0
    node_id: str = ""
    symbol: str = ":/symbols/affinity/square/blue/router.svg"

    @property
    def environment(self):
        """GNS3's ``environment`` property: one ``KEY=VALUE`` a line."""
        return "\n".join(f"{k}={v}" for k, v in self.env.items())


@dataclasses.dataclass
class PlanLink:
    link_id: str
    a: str
    a_adapter: int
    b: str
    b_adapter: int
    kind: str                   # "lab" (a topology link) | "mgmt"


@dataclasses.dataclass
class Plan:
    name: str
    project_id: str
    topology_path: str
    nodes: list                 # of PlanNode, hosts, routers, governance
    links: list                 # of PlanLink
    contract: str               # the Beat contract's address (the governance's first deploy)
    chain_url: str

    def node(self, name):
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def _b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def _mac(index, adapter=0):
    if not 0 <= index <= 255 or not 0 <= adapter <= 255:
        raise GNS3Error(f"node index {index} / adapter {adapter}: out of the MAC scheme")
    return f"02:be:00:{index:02x}:00:{adapter:02x}"


def _uuid(*parts):
    return str(uuid.uuid5(_UUID_NS, "/".join(str(p) for p in parts)))


def _keccak256(data):
    from Crypto.Hash import keccak
    return keccak.new(digest_bits=256, data=data).digest()


def eth_account():
    """A new Ethereum account: (private key "0x..." hex, address "0x..." lowercase hex).
    secp256k1 from ``cryptography``, Keccak-256 from pycryptodome (no web3 needed here)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256K1())
    priv = key.private_numbers().private_value.to_bytes(32, "big")
    return "0x" + priv.hex(), eth_address(priv)


def eth_address(private_key):
    """The address of a secp256k1 private key (32 bytes or hex)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(private_key, str):
        private_key = bytes.fromhex(private_key[2:] if private_key.startswith("0x")
                                    else private_key)
    key = ec.derive_private_key(int.from_bytes(private_key, "big"), ec.SECP256K1())
    point = key.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    return "0x" + _keccak256(point[1:])[12:].hex()


def create_address(sender, nonce=0):
    """The address of the contract ``sender`` creates with its transaction ``nonce`` (< 128):
    keccak256(rlp([sender, nonce]))[12:]."""
    s = bytes.fromhex(sender[2:] if sender.startswith("0x") else sender)
    if len(s) != 20 or not 0 <= nonce < 0x80:
        raise ValueError("create_address: a 20-byte sender and a nonce below 128")
    item = bytes([0x80]) if nonce == 0 else bytes([nonce])
    payload = bytes([0x80 + 20]) + s + item
    return "0x" + _keccak256(bytes([0xC0 + len(payload)]) + payload)[12:].hex()


def _secrets(topo, mgmt_ips):
    """The lab's keys, made now: {"ca": PEM, "routers": {name: {...}}, "governance": {...}}."""
    from . import ca as certs
    from ledger_client.keys import DeviceKey

    out = {"routers": {}}
    with tempfile.TemporaryDirectory(prefix="beat-gns3-pki-") as tmp:
        ca = os.path.join(tmp, "ca")
        certs.make_ca(ca, common_name=f"BEAT GNS3 lab CA ({topo.name})")
        with open(os.path.join(ca, "ca.crt"), "rb") as f:
            out["ca"] = f.read()
        for r in topo.routers:
            d = os.path.join(tmp, r.name)
            crt, key = certs.make_device(ca, d, r.node_id, ips=[mgmt_ips[r.name]], dns=[r.name])
            dev = DeviceKey.generate()
            priv, addr = eth_account()
            with open(crt, "rb") as f, open(key, "rb") as g:
                out["routers"][r.name] = {"cert": f.read(), "key": g.read(),
                                          "device_key": dev.to_pem(), "public": dev.public_hex,
                                          "eth_key": priv, "account": addr}
        crt, key = certs.make_governance(ca, os.path.join(tmp, "governance"))
        priv, addr = eth_account()
        with open(crt, "rb") as f, open(key, "rb") as g:
            out["governance"] = {"cert": f.read(), "key": g.read(), "eth_key": priv,
                                 "account": addr}
    return out


def plan(topology=None, name=None, secrets=None):
    """The GNS3 plan of a lab topology file (default: the paper's). ``secrets`` (tests) replaces
    the keys made here."""
    from . import lab as lab_mod
    from .data import DataError, topology_path
    from .netns import Net, NetError
    from .topology import TopologyError, load

    try:
        path = topology_path(topology)
        topo = load(path)
    except (DataError, TopologyError) as exc:
        raise GNS3Error(str(exc)) from None
    net = Net(topo, "beat-")
    try:
        mgmt = {r: (lif, laddr, raddr, netw) for r, lif, laddr, raddr, netw
                in net.management_links()}
        chain_ip = str(net.ledger_address())
        route_plan = net.route_plan()
    except NetError as exc:
        raise GNS3Error(str(exc)) from None
    name = name or topo.name
    order = list(topo.hosts) + list(topo.routers)
    index = {n.name: i for i, n in enumerate(order)}
    gov_index = len(order)

    # adapters: a node's topology links in file order, then (routers) the management link
    adapters = {n.name: [] for n in order}
    for l in topo.links:
        for end in l.ends():
            adapters[end].append(l)

    def ifname(node, link):
        return f"eth{adapters[node].index(link)}"

    def mac(node, link):
        return _mac(index[node], adapters[node].index(link))

    mgmt_ips = {r.name: str(mgmt[r.name][2]) for r in topo.routers}
    sec = secrets if secrets is not None else _secrets(topo, mgmt_ips)
    gov_acct = sec["governance"]["account"]
    contract = create_address(gov_acct, 0)
    chain_url = f"http://{chain_ip}:{CHAIN_PORT}"

    nodes = []
    for h in topo.hosts:
        link = topo.host_link(h.name)
        router = link.peer(h.name)
        env = {"BEAT_ROLE": "host", "BEAT_ETH_COUNT": "1",
               "BEAT_IFACES": f"eth0={link.addr(h.name)}/24@{mac(h.name, link)}",
               "BEAT_ROUTES": f"default={link.addr(router)}"}
        nodes.append(PlanNode(h.name, "host", ROUTER_IMAGE, 1, _mac(index[h.name]), env,
                              symbol=":/symbols/affinity/square/blue/client.svg"))
    for i, r in enumerate(topo.routers):
        links = adapters[r.name]
        n_adp = len(links) + 1
        mgmt_if = f"eth{len(links)}"
        lif, laddr, raddr, mnet = mgmt[r.name]
        ifaces = ",".join(f"{ifname(r.name, l)}={l.addr(r.name)}/24@{mac(r.name, l)}"
                          for l in links)
        neigh = []
        for l in links:
            peer = topo.node(l.peer(r.name))
            if peer.kind == "router":
                neigh.append(f"{peer.node_id}={mac(peer.name, l)}@{l.addr(peer.name)}"
                             f"%{ifname(r.name, l)}")
        routes = []
        for pfx, nxt in route_plan[r.name].items():
            l = topo.link_between(r.name, nxt)
            routes.append(f"{pfx}={l.addr(nxt)}")
        routes.append(f"{chain_ip}/32={laddr}")
        s = sec["routers"][r.name]
        env = {"BEAT_ROLE": "router", "BEAT_NODE_ID": str(r.node_id),
               "BEAT_ETH_COUNT": str(n_adp), "BEAT_IFACES": ifaces,
               "BEAT_MGMT": f"{mgmt_if}={raddr}/{mnet.prefixlen}@{_mac(index[r.name], len(links))}",
               "BEAT_NEIGHBOURS": ",".join(neigh), "BEAT_ROUTES": ",".join(routes),
               "BEAT_LEDGER": f"ethereum:{chain_url}#{contract}",
               "BEAT_ANCHOR_PERIOD_S": f"{ANCHOR_PERIOD_S:g}", "BEAT_RING_SIZE": RING_SIZE,
               "BEAT_INTERROGATION_LISTEN": f"{raddr}:{lab_mod.LAB_GRPC_PORT}",
               "BEAT_GOVERNANCE_CA": _b64(sec["ca"]), "BEAT_TLS_CERT": _b64(s["cert"]),
               "BEAT_TLS_KEY": _b64(s["key"]), "BEAT_DEVICE_KEY": _b64(s["device_key"]),
               "BEAT_ETH_KEY": s["eth_key"]}
        nodes.append(PlanNode(r.name, "router", ROUTER_IMAGE, n_adp, _mac(index[r.name]), env))
    # the governance: one adapter per router's management link
    gov_ifaces = ",".join(f"eth{i}={mgmt[r.name][1]}/{mgmt[r.name][3].prefixlen}"
                          f"@{_mac(gov_index, i)}" for i, r in enumerate(topo.routers))
    nodes_spec = " ".join(
        f"{r.name},{r.node_id},{mgmt_ips[r.name]}:{lab_mod.LAB_GRPC_PORT},"
        f"{sec['routers'][r.name]['public']},{sec['routers'][r.name]['account']}"
        for r in topo.routers)
    agreed_ids = "-".join(str(topo.node(r).node_id) for r in topo.agreed)
    owners = topo.owners()
    owners_spec = " ".join(f"{r.node_id}={owners[r.name]}" for r in topo.routers)
    links_spec = " ".join(f"{a}-{b}" for a, b in topo.router_link_ids())
    sla = (f"id={lab_mod.LAB_SLA_ID} tenant=lab-tenant src={topo.host_addr(topo.src)} "
           f"dst={topo.host_addr(topo.dst)} route={agreed_ids} "
           f"max_loss_ppm={lab_mod.LAB_LOSS_BUDGET_PPM} max_delay_us={lab_mod.LAB_MAX_DELAY_US} "
           f"loss_budget_ppm={lab_mod.LAB_LOSS_BUDGET_PPM} penalty=100")
    g = sec["governance"]
    gov_env = {"BEAT_ROLE": "governance", "BEAT_ETH_COUNT": str(len(topo.routers)),
               "BEAT_MGMT_IFACES": gov_ifaces, "BEAT_CHAIN_ADDRESS": chain_ip,
               "BEAT_CHAIN_PORT": str(CHAIN_PORT), "BEAT_CONTRACT": contract,
               "BEAT_NODES": nodes_spec, "BEAT_SLA": sla, "BEAT_OWNERS": owners_spec,
               "BEAT_LINKS": links_spec,
               "BEAT_GOVERNANCE_CA": _b64(sec["ca"]), "BEAT_GOV_CERT": _b64(g["cert"]),
               "BEAT_GOV_KEY": _b64(g["key"]), "BEAT_GOV_ETH_KEY": g["eth_key"]}
    nodes.append(PlanNode(GOVERNANCE_NAME, "governance", GOVERNANCE_IMAGE, len(topo.routers),
                          _mac(gov_index), gov_env,
                          symbol=":/symbols/affinity/square/blue/server.svg"))
    if GOVERNANCE_NAME in index:
        raise GNS3Error(f"the topology has a node named {GOVERNANCE_NAME!r}: that name is the "
                        "governance node's")

    links = []
    for l in topo.links:
        links.append(PlanLink(_uuid(name, "link", l.index), l.a, adapters[l.a].index(l), l.b,
                              adapters[l.b].index(l), "lab"))
    for i, r in enumerate(topo.routers):
        links.append(PlanLink(_uuid(name, "mgmt", r.name), r.name, len(adapters[r.name]),
                              GOVERNANCE_NAME, i, "mgmt"))
    _layout(topo, nodes)
    for n in nodes:
        n.node_id = _uuid(name, "node", n.name)
    return Plan(name=name, project_id=_uuid(name, "project"), topology_path=path, nodes=nodes,
                links=links, contract=contract, chain_url=chain_url)


def _layout(topo, nodes):
    """Positions: the agreed path on a row, src host left, dst host right, the detour's inner
    routers below, other routers further below, the governance above the middle."""
    step, pos = 180, {}
    row = [topo.src] + list(topo.agreed) + [topo.dst]
    for i, n in enumerate(row):
        pos[n] = ((i - (len(row) - 1) / 2) * step, 0)
    if topo.detour:
        inner = topo.detour[1:-1]
        x0, x1 = pos[topo.detour[0]][0], pos[topo.detour[-1]][0]
        for j, r in enumerate(inner):
            pos[r] = (x0 + (x1 - x0) * (j + 1) / (len(inner) + 1), 160)
    rest = [n.name for n in topo.hosts + topo.routers if n.name not in pos]
    for j, n in enumerate(rest):
        pos[n] = ((j - (len(rest) - 1) / 2) * step, 320)
    pos[GOVERNANCE_NAME] = (0, -220)
    for n in nodes:
        n.x, n.y = int(pos[n.name][0]) - 30, int(pos[n.name][1]) - 30


# ---------------------------------------------------------------------------------------------
# the .gns3 file and the portable .gns3project

_LABEL_STYLE = ("font-family: TypeWriter;font-size: 10.0;font-weight: bold;fill: #000000;"
                "fill-opacity: 1.0;")


def _node_json(n):
    return {
        "compute_id": "local", "node_id": n.node_id, "name": n.name, "node_type": "docker",
        "console": None, "console_type": "telnet", "console_auto_start": False,
        "aux": None, "aux_type": "telnet" if n.kind != "host" else "none",
        "properties": {"image": n.image, "adapters": n.adapters, "mac_address": n.mac_base,
                       "environment": n.environment, "start_command": None,
                       "console_resolution": "1024x768", "console_http_port": 80,
                       "console_http_path": "/", "extra_hosts": None, "extra_volumes": [],
                       "memory": 0, "cpus": 0.0,
                       "usage": _USAGE[n.kind]},
        "symbol": n.symbol, "label": {"text": n.name, "style": None, "x": None, "y": -40,
                                      "rotation": 0},
        "x": n.x, "y": n.y, "z": 1, "locked": False, "port_name_format": "eth{0}",
        "port_segment_size": 0, "first_port_name": None, "custom_adapters": [],
        "template_id": None,
    }


def _link_json(plan_, l):
    return {"link_id": l.link_id, "filters": {}, "suspend": False, "link_style": {},
            "nodes": [{"node_id": plan_.node(l.a).node_id, "adapter_number": l.a_adapter,
                       "port_number": 0, "label": {"text": f"eth{l.a_adapter}",
                                                   "style": _LABEL_STYLE}},
                      {"node_id": plan_.node(l.b).node_id, "adapter_number": l.b_adapter,
                       "port_number": 0, "label": {"text": f"eth{l.b_adapter}",
                                                   "style": _LABEL_STYLE}}]}


def topology_json(plan_):
    """The project's ``.gns3`` document (GNS3 3.0 format, revision 10)."""
    return {
        "project_id": plan_.project_id, "name": plan_.name, "type": "topology",
        "revision": GNS3_REVISION, "version": GNS3_VERSION, "auto_start": False,
        "auto_open": False, "auto_close": True, "scene_width": 2000, "scene_height": 1000,
        "zoom": 100, "show_layers": False, "snap_to_grid": False, "show_grid": False,
        "grid_size": 75, "drawing_grid_size": 25, "show_interface_labels": True,
        "supplier": None, "variables": None,
        "topology": {"computes": [], "drawings": [_note(plan_)],
                     "nodes": [_node_json(n) for n in plan_.nodes],
                     "links": [_link_json(plan_, l) for l in plan_.links]},
    }


def _note(plan_):
    text = (f"BEAT: {os.path.basename(plan_.topology_path)}. Start all nodes; the governance "
            f"({GOVERNANCE_NAME}) runs the chain and beatctl. gns3/README.md: a dispute.")
    svg = ('<svg height="40" width="560"><text fill="#000000" fill-opacity="1.0" '
           'font-family="TypeWriter" font-size="10.0">' + _xml(text) + '</text></svg>')
    return {"drawing_id": _uuid(plan_.name, "note"), "x": -300, "y": -330, "z": 2,
            "locked": False, "rotation": 0, "svg": svg}


def _xml(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_project(plan_, out):
    """``out`` ending in ``.gns3project``: the portable zip (``project.gns3`` and the empty
    ``project-files/``); else a directory with ``<name>.gns3``. Returns the path written."""
    doc = json.dumps(topology_json(plan_), indent=4, sort_keys=True) + "\n"
    if out.endswith(".gns3project") or out.endswith(".gns3p"):
        d = os.path.dirname(os.path.abspath(out))
        os.makedirs(d, exist_ok=True)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("project.gns3", doc)
        tmp = f"{out}.tmp.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, out)
        return out
    if out.endswith(".gns3"):
        raise GNS3Error(f"--out {out}: give a directory (the .gns3 file goes inside it) or a "
                        "FILE.gns3project")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{plan_.name}.gns3")
    with open(path, "w") as f:
        f.write(doc)
    os.makedirs(os.path.join(out, "project-files"), exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# the appliances

_USAGE = {
    "router": ("A BEAT router: FRR (static routes from BEAT_ROUTES) and beatd, configured from "
               "the environment (gns3/README.md). The console shows beatd's log; the auxiliary "
               "console is a shell (vtysh, beatd status). Stores persist in /var/lib/beatd."),
    "host": ("A lab host on the BEAT router image (BEAT_ROLE=host): addresses and a default "
             "route from the environment; the console is a shell (ping, ip)."),
    "governance": ("The BEAT governance: a development chain (ganache) with the Beat contract "
                   "and every router registered, and beatctl. The auxiliary console is a shell: "
                   "beat-dispute --last 60 interrogates the routers (gns3/README.md)."),
}


def _template_properties(kind):
    """The docker template properties of an appliance (what the GNS3 GUI turns into a
    template)."""
    if kind == "router":
        return {"image": ROUTER_IMAGE, "adapters": 4, "console_type": "telnet",
                "environment": "BEAT_ROLE=router\nBEAT_NODE_ID=\nBEAT_IFACES=\n"
                               "BEAT_NEIGHBOURS=\nBEAT_ROUTES=\nBEAT_LEDGER=none",
                "extra_volumes": ["/var/lib/beatd"]}
    return {"image": GOVERNANCE_IMAGE, "adapters": 4, "console_type": "telnet",
            "environment": "BEAT_ROLE=governance\nBEAT_MGMT_IFACES=\nBEAT_NODES=\nBEAT_SLA=",
            "extra_volumes": ["/var/lib/beat"]}


def appliances(registry_version=8):
    """{file name: appliance dict} of the two images: ``registry_version`` 8 (the current
    gns3-registry schema: ``settings`` with ``template_type: docker``), what the GNS3 GUI
    imports; 6 (a top-level ``docker`` section), what gns3-server 3.0 itself loads from its
    appliances directory (its model knows registry versions 1 to 6 only)."""
    out = {}
    for kind, file, aid, name, desc, cat in (
            ("router", "beat-router.gns3a", ROUTER_APPLIANCE_ID, ROUTER_TEMPLATE,
             "A router that keeps forwarding proofs, counters and receipts for the BEAT "
             "accountability protocol (beatd), with FRR for routing. Hosts of a BEAT lab run "
             "the same image with BEAT_ROLE=host.", "router"),
            ("governance", "beat-governance.gns3a", GOVERNANCE_APPLIANCE_ID,
             GOVERNANCE_TEMPLATE, "The governance of a BEAT lab: a development Ethereum chain "
             "with the Beat contract, the routers registered, and beatctl to interrogate "
             "them.", "guest")):
        props = _template_properties(kind)
        a = {"appliance_id": aid, "name": name, "category": cat, "description": desc,
             "vendor_name": "BEAT", "vendor_url": "https://example.org/",
             "product_name": name, "registry_version": registry_version,
             "status": "experimental", "availability": "free", "maintainer": "BEAT",
             "maintainer_email": "beat@example.org", "usage": _USAGE[kind],
             "symbol": (":/symbols/affinity/square/blue/router.svg" if kind == "router" else
                        ":/symbols/affinity/square/blue/server.svg")}
        if registry_version >= 8:
            a["settings"] = [{"default": True, "template_type": "docker",
                              "template_properties": dict(props)}]
        else:
            a["docker"] = dict(props)
        out[file] = a
    return out


def write_appliances(out_dir):
    """Both flavours: ``DIR/*.gns3a`` (registry 8) and ``DIR/server/*.gns3a`` (registry 6)."""
    written = []
    for sub, version in (("", 8), ("server", 6)):
        d = os.path.join(out_dir, sub)
        os.makedirs(d, exist_ok=True)
        for file, a in appliances(version).items():
            path = os.path.join(d, file)
            with open(path, "w") as f:
                f.write(json.dumps(a, indent=4) + "\n")
            written.append(path)
    return written


def template_from_appliance(kind, compute_id="local"):
    """The template the appliance makes (as GNS3's own conversion: name, category, symbol,
    usage, then the docker properties)."""
    a = appliances(8)["beat-router.gns3a" if kind == "router" else "beat-governance.gns3a"]
    t = {"name": a["name"], "compute_id": compute_id, "category": a["category"],
         "symbol": a["symbol"], "usage": a["usage"], "template_type": "docker"}
    t.update(a["settings"][0]["template_properties"])
    return t


# ---------------------------------------------------------------------------------------------
# the GNS3 server (REST API v3)

class GNS3Client:
    """A GNS3 3.x controller: ``POST /v3/access/users/authenticate`` for a bearer token, then
    JSON requests."""

    def __init__(self, url, user="admin", password="admin", timeout=60.0):
        u = urllib.parse.urlparse(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise GNS3Error(f"--server {url}: not an http(s) URL")
        self.base = url.rstrip("/")
        if self.base.endswith("/v3"):
            self.base = self.base[:-3]
        self.timeout = timeout
        self.token = None
        r = self.request("POST", "/v3/access/users/authenticate",
                         {"username": user, "password": password}, auth=False)
        self.token = r["access_token"]

    def request(self, method, path, body=None, auth=True, ok=(200, 201, 204)):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth and self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                msg = json.loads(raw).get("message") or raw.decode(errors="replace")
            except ValueError:
                msg = raw.decode(errors="replace")
            raise GNS3Error(f"{method} {path}: HTTP {exc.code}: {str(msg).strip()[:600]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise GNS3Error(f"{self.base}: cannot reach the GNS3 server: "
                            f"{getattr(exc, 'reason', exc)}") from None
        if status not in ok:
            raise GNS3Error(f"{method} {path}: HTTP {status}")
        return json.loads(raw) if raw else None


def ensure_templates(client):
    """{"router": template_id, "governance": template_id}: the server's templates named
    ``BEAT router`` / ``BEAT governance`` (an imported appliance makes them), created from the
    appliances when missing."""
    have = {t["name"]: t for t in client.request("GET", "/v3/templates")}
    out = {}
    for kind in ("router", "governance"):
        want = template_from_appliance(kind)
        t = have.get(want["name"])
        if t is None:
            t = client.request("POST", "/v3/templates", want)
        elif t.get("template_type") != "docker":
            raise GNS3Error(f"the server's template {want['name']!r} is a "
                            f"{t.get('template_type')} template, not docker")
        out[kind] = t["template_id"]
    return out


def create_on_server(plan_, client):
    """Create the project on the server: templates, project, nodes (from the templates, then
    named, placed and configured), links. Returns the project dict."""
    templates = ensure_templates(client)
    names = {p["name"] for p in client.request("GET", "/v3/projects")}
    if plan_.name in names:
        raise GNS3Error(f"the server already has a project named {plan_.name!r}: delete it or "
                        "give --name")
    proj = client.request("POST", "/v3/projects", {"name": plan_.name})
    pid = proj["project_id"]
    ids = {}
    try:
        for n in plan_.nodes:
            tid = templates["router" if n.image == ROUTER_IMAGE else "governance"]
            node = client.request("POST", f"/v3/projects/{pid}/templates/{tid}",
                                  {"x": n.x, "y": n.y, "compute_id": "local"})
            nid = node["node_id"]
            client.request("PUT", f"/v3/projects/{pid}/nodes/{nid}", {
                "name": n.name, "symbol": n.symbol, "x": n.x, "y": n.y,
                "aux_type": "telnet" if n.kind != "host" else "none",
                "properties": {"adapters": n.adapters, "mac_address": n.mac_base,
                               "environment": n.environment, "usage": _USAGE[n.kind]}})
            ids[n.name] = nid
        for l in plan_.links:
            client.request("POST", f"/v3/projects/{pid}/links", {"nodes": [
                {"node_id": ids[l.a], "adapter_number": l.a_adapter, "port_number": 0},
                {"node_id": ids[l.b], "adapter_number": l.b_adapter, "port_number": 0}]})
    except GNS3Error as exc:
        raise GNS3Error(f"project {plan_.name} ({pid}) is only partly created: {exc}") from None
    return proj


# ---------------------------------------------------------------------------------------------
# command line

def add_arguments(p):
    """The arguments of ``beat-lab gns3`` (``project``, ``appliances``) on parser ``p``."""
    sub = p.add_subparsers(dest="gns3_command", required=True, metavar="ACTION")
    pr = sub.add_parser("project", help="write a portable GNS3 project, or create it on a "
                                        "GNS3 server (--server)")
    pr.add_argument("--topology", metavar="F", default=None,
                    help="lab topology TOML, or a bundled one by name (default: paper, "
                         "the paper's testbed)")
    pr.add_argument("--name", default=None, help="project name (default: the topology's "
                                                 "lab.name)")
    pr.add_argument("--out", metavar="DIR|FILE.gns3project", default=None,
                    help="a directory (NAME.gns3 inside) or a portable FILE.gns3project "
                         "(default: NAME.gns3project here)")
    pr.add_argument("--server", metavar="URL", default=None,
                    help="create the project on this GNS3 3.x server instead "
                         "(e.g. http://127.0.0.1:3080)")
    pr.add_argument("--user", default=os.environ.get("GNS3_USER", "admin"),
                    help="GNS3 user (default admin, or $GNS3_USER)")
    pr.add_argument("--password", default=os.environ.get("GNS3_PASSWORD", "admin"),
                    help="its password (default admin, or $GNS3_PASSWORD)")
    ap = sub.add_parser("appliances", help="write the appliance files (registry 8, and "
                                           "registry 6 under server/)")
    ap.add_argument("--out", metavar="DIR", required=True)
    return p


def main(args):
    """Run ``beat-lab gns3 ...``; returns the exit code (0; 2 bad input; 1 the server refused)."""
    try:
        if args.gns3_command == "appliances":
            for path in write_appliances(args.out):
                print(path)
            return 0
        if args.server and args.out:
            raise GNS3Error("--out and --server: give one")
        p = plan(args.topology, args.name)
        if args.server:
            try:
                client = GNS3Client(args.server, args.user, args.password)
                proj = create_on_server(p, client)
            except GNS3Error as exc:
                print(f"beat-lab: gns3 project: {exc}", file=sys.stderr)
                return EXIT_SERVER
            print(proj["project_id"])
            return 0
        path = write_project(p, args.out or f"{p.name}.gns3project")
        print(path)
        return 0
    except GNS3Error as exc:
        print(f"beat-lab: gns3 {args.gns3_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"beat-lab: gns3 {args.gns3_command}: {exc.filename or ''}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
