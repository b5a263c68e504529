"""Compile Beat.sol into Beat.json with the solc pinned in package.json (npm `solc`, run by node).

    python ledger_client/contracts/compile.py           # (re)write Beat.json
    python ledger_client/contracts/compile.py --check   # exit 1 when Beat.json is stale

Needs `npm ci` in this directory first (node_modules is not committed). Fixed settings: standard
JSON input, optimizer on (200 runs), EVM version "paris" (runs on eth-tester/py-evm, ganache 7 and
any post-merge PoA chain), so the output is reproducible byte for byte.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "Beat.sol")
ARTIFACT = os.path.join(HERE, "Beat.json")
SOLCJS = os.path.join(HERE, "node_modules", "solc", "solc.js")
CONTRACT = "Beat"
SETTINGS = {
    "optimizer": {"enabled": True, "runs": 1},
    "evmVersion": "paris", "viaIR": True,
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class CompileError(RuntimeError):
    pass


def pinned_version():
    with open(os.path.join(HERE, "package.json")) as f:
        return json.load(f)["devDependencies"]["solc"]


def solc_version():
    if not os.path.exists(SOLCJS):
        raise CompileError(f"{SOLCJS} missing: run `npm ci` in {HERE}")
    out = subprocess.run(["node", SOLCJS, "--version"], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    return out   # e.g. "0.8.37+commit.xxxx.Emscripten.clang"


def compile_source(source_path=SOURCE):
    """Compile and return the artifact (a dict, as written to Beat.json)."""
    with open(source_path, "rb") as f:
        source = f.read()
    version = solc_version()
    if not version.startswith(pinned_version() + "+"):
        raise CompileError(f"solcjs {version} is not the pinned {pinned_version()}: run `npm ci`")
    request = {"language": "Solidity",
               "sources": {"Beat.sol": {"content": source.decode()}},
               "settings": SETTINGS}
    # stdout to a file, not a pipe: solcjs exits (process.exit) without draining a pipe, which
    # cuts its output at the pipe's 64 KiB; a file is written synchronously
    with tempfile.TemporaryFile("w+b") as out_file:
        proc = subprocess.run(["node", SOLCJS, "--standard-json"],
                              input=json.dumps(request).encode(), stdout=out_file,
                              stderr=subprocess.PIPE, timeout=300, cwd=HERE)
        out_file.seek(0)
        stdout = out_file.read().decode()
    stderr = proc.stderr.decode(errors="replace")
    # solcjs may print notes (">>> Cannot retry compilation with SMT ...") before the JSON
    text = stdout[stdout.find("{"):] if "{" in stdout else ""
    try:
        out = json.loads(text)
    except ValueError:
        raise CompileError(f"solcjs failed (rc {proc.returncode}): "
                           f"{(stderr or stdout)[:2000]}")
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors or "contracts" not in out:
        raise CompileError("solc: " + "\n".join(e.get("formattedMessage", str(e)) for e in errors))
    c = out["contracts"]["Beat.sol"][CONTRACT]
    return {
        "contractName": CONTRACT,
        "sourceName": "Beat.sol",
        "sourceSha256": hashlib.sha256(source).hexdigest(),
        "compiler": {"name": "solcjs", "version": version, "settings": SETTINGS},
        "abi": c["abi"],
        "bytecode": "0x" + c["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
    }


def dumps(artifact):
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def load_artifact(path=ARTIFACT):
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    artifact = compile_source()
    if "--check" in argv:
        try:
            with open(ARTIFACT) as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != dumps(artifact):
            print(f"{ARTIFACT} is stale: run python {os.path.relpath(__file__)}", file=sys.stderr)
            return 1
        print(f"{ARTIFACT} is up to date")
        return 0
    with open(ARTIFACT, "w") as f:
        f.write(dumps(artifact))
    print(f"wrote {ARTIFACT} ({len(artifact['bytecode']) // 2 - 1} bytes of init code, "
          f"solc {artifact['compiler']['version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
