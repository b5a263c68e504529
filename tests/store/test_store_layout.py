"""beatd.store.layout is the one place that spells the device's LMDB environment: the databases a
store holds are exactly the layout's, no module outside beatd/store opens one by name or spells a
meta key, and each rule of the SPEC (NONE, RECORD_SIZE, node ids, sync modes) is defined once.
The roles stay apart: governance and ledger_client never import beatd."""
import ast
import os
import re
import subprocess
import sys

import lmdb
import pytest

from beatd.store import Store, layout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the code of every role (tests keep their own reference constants on purpose: not scanned)
PACKAGES = ("beatd", "ledger_client", "governance", "beat_rpc", "beat_common", "beat_lab",
            "benchmarks", "fastpath", "fuzz", "scripts", "gns3")
STORE_PKG = os.path.join("beatd", "store") + os.sep
# the local ledger is an LMDB environment of its own (one file per host), not the device's store
OWN_ENVIRONMENTS = {os.path.join("ledger_client", "local.py")}


def _python_files():
    for pkg in PACKAGES:
        top = os.path.join(REPO, pkg)
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "node_modules")]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    yield os.path.relpath(path, REPO), path


def _source(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_a_store_holds_exactly_the_layouts_databases(tmp_path):
    with Store(tmp_path / "s", 1, "sha3-256", 1 << 20) as s:
        with s.env.begin() as txn:
            made = sorted(bytes(k).decode() for k, _ in txn.cursor())
        assert made == sorted(layout.STORE_DBS)          # the outbox's only when it is used
        s.ledger_outbox()
        with s.env.begin() as txn:
            names = sorted(bytes(k).decode() for k, _ in txn.cursor())
        assert names == sorted(layout.STORE_DBS + layout.OUTBOX_DBS)
        s.record_capture([(1, 2, 3, layout.GAP_KERNEL_DROPS, "eth0")])   # the first gap record
        with s.env.begin() as txn:
            names = sorted(bytes(k).decode() for k, _ in txn.cursor())
        assert names == sorted(layout.DB_NAMES)
        assert set(s.db) == set(layout.DB_NAMES)
        assert layout.MAX_DBS == len(layout.DB_NAMES)
        with pytest.raises(lmdb.DbsFullError):           # no room for a database not in it
            s.env.open_db(b"not_in_the_layout", create=True)


def test_a_new_stores_meta_is_the_layouts(tmp_path):
    with Store(tmp_path / "s", 1, "sha3-256", 1 << 20) as s:
        keys = {k.encode() for k in s.meta()}
    declared = {v for k, v in vars(layout).items() if k.startswith("M_")}
    # every key written at creation is declared; the ones not yet written come later
    assert keys <= declared
    assert declared - keys == {layout.M_CAPTURE_ALIVE_T_NS}


def test_no_module_outside_the_store_opens_a_database_by_name():
    offenders = []
    for rel, path in _python_files():
        if rel.startswith(STORE_PKG) or rel in OWN_ENVIRONMENTS:
            continue
        for n, line in enumerate(_source(path).splitlines(), 1):
            if re.search(r"\.open_db\(", line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == [], "LMDB databases opened outside beatd/store:\n" + "\n".join(offenders)


def test_no_module_outside_the_store_spells_a_database_or_meta_key():
    names = set(layout.DB_NAMES)
    keys = {v.decode() for k, v in vars(layout).items() if k.startswith("M_")}
    offenders = []
    for rel, path in _python_files():
        if rel.startswith(STORE_PKG) or rel in OWN_ENVIRONMENTS:
            continue
        tree = ast.parse(_source(path), rel)
        for node in ast.walk(tree):
            # store.db["proofs"], txn.get(b"next_seg_seq", ...)
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and \
                    node.value.attr == "db" and isinstance(node.slice, ast.Constant) and \
                    node.slice.value in names:
                offenders.append(f"{rel}:{node.lineno}: db[{node.slice.value!r}]")
            if isinstance(node, ast.Constant) and isinstance(node.value, bytes) and \
                    node.value.decode("latin-1") in keys | names:
                offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert offenders == [], "store names spelled outside beatd/store:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", ["NONE", "RECORD_SIZE", "NODE_ID_MAX", "NODE_ID_MIN",
                                  "SYNC_MODES", "LEAF_RECEIPT", "LEAF_SEGMENT"])
def test_each_rule_is_defined_once(name):
    homes = []
    for rel, path in _python_files():
        for node in ast.walk(ast.parse(_source(path), rel)):
            targets = (node.targets if isinstance(node, ast.Assign) else
                       [node.target] if isinstance(node, ast.AnnAssign) else [])
            for t in targets:
                for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if isinstance(el, ast.Name) and el.id == name:
                        homes.append(rel)
    assert len(homes) == 1, f"{name} is defined in {homes}"


def test_the_rules_have_their_values():
    from beat_common import spec
    import fastpath
    from beat_rpc import evidence
    assert spec.NONE == fastpath.NONE == evidence.NONE == (1 << 64) - 1
    assert spec.RECORD_SIZE == fastpath.RECORD_SIZE == evidence.RECORD_SIZE == 48
    assert (spec.NODE_ID_MIN, spec.NODE_ID_MAX) == (1, (1 << 64) - 2)
    assert spec.is_node_id(1) and spec.is_node_id((1 << 64) - 2)
    assert not any(spec.is_node_id(v) for v in (0, (1 << 64) - 1, True, 1.0, "1"))
    from beatd import config
    assert config.SYNC_MODES is layout.SYNC_MODES


def _imported_by(packages):
    code = f"""
import importlib, pkgutil, sys
for top in {packages!r}:
    pkg = importlib.import_module(top)
    for m in pkgutil.walk_packages(pkg.__path__, top + "."):
        importlib.import_module(m.name)
print("\\n".join(sorted(sys.modules)))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("role", ["governance", "ledger_client", "beat_rpc", "beat_common"])
def test_a_role_does_not_import_beatd(role):
    loaded = _imported_by([role])
    assert any(m == role or m.startswith(role + ".") for m in loaded)
    assert [m for m in loaded if m == "beatd" or m.startswith("beatd.")] == []
