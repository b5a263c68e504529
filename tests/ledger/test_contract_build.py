"""The committed Beat.json is what the pinned solc makes of Beat.sol (else: recompile with
`python ledger_client/contracts/compile.py`). Needs `npm ci` in ledger_client/contracts."""
import hashlib
import json
import os
import shutil

import pytest

from conftest import IN_CI
from ledger_client.contracts import compile as beat_compile

HERE = os.path.dirname(beat_compile.__file__)


def _need_solcjs():
    missing = None
    if shutil.which("node") is None:
        missing = "node is not installed"
    elif not os.path.exists(beat_compile.SOLCJS):
        missing = f"{beat_compile.SOLCJS} missing: run `npm ci` in {HERE}"
    if missing:
        if IN_CI:
            pytest.fail(missing)
        pytest.skip(missing)


def test_committed_artifact_names_this_source():
    """Cheap, no node needed: Beat.json was made from the Beat.sol beside it."""
    art = beat_compile.load_artifact()
    with open(beat_compile.SOURCE, "rb") as f:
        assert art["sourceSha256"] == hashlib.sha256(f.read()).hexdigest(), (
            "Beat.sol changed without recompiling: python ledger_client/contracts/compile.py")
    assert art["compiler"]["version"].startswith(beat_compile.pinned_version() + "+")
    assert art["compiler"]["settings"] == beat_compile.SETTINGS


def test_solc_is_pinned_in_the_lock_file():
    with open(os.path.join(HERE, "package.json")) as f:
        pkg = json.load(f)
    with open(os.path.join(HERE, "package-lock.json")) as f:
        lock = json.load(f)
    for name, version in pkg["devDependencies"].items():
        assert version[0].isdigit(), f"{name} must be pinned exactly, not {version!r}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


def test_recompiling_gives_the_committed_artifact():
    _need_solcjs()
    fresh = beat_compile.compile_source()
    committed = beat_compile.load_artifact()
    assert fresh["abi"] == committed["abi"], "ABI differs: recompile"
    assert fresh["bytecode"] == committed["bytecode"], "bytecode differs: recompile"
    assert fresh["deployedBytecode"] == committed["deployedBytecode"]
    assert beat_compile.dumps(fresh) == beat_compile.dumps(committed)
    assert len(committed["deployedBytecode"]) // 2 - 1 <= 24576, "over the EIP-170 size limit"
