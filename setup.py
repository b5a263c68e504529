"""Build of BEAT: the Python packages and the native fast path (Cython + C).

Cython is pinned here and only here (CYTHON_VERSION); `pip install .` builds the extension.

`pip install .` is the router install: beatd, beatctl and beat-lab (the lab CA, the GNS3 writer,
the offline demo), neither scapy nor web3. Extras: `beat[lab]` (the namespace lab's packets:
scapy), `beat[ethereum]` (the `ethereum` ledger backend: web3). The pins of all of them are in
requirements*.txt (requirements-dev.txt takes everything); here are the ranges.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

CYTHON_VERSION = "3.0.11"
HERE = os.path.dirname(os.path.abspath(__file__))
# the installed packages, one per role: the router daemon and its fast path, the ledger client,
# the governance, the gRPC stubs, the testbed. Not installed: benchmarks, tests, tools, scripts.
PACKAGES = ("beat_common", "fastpath", "beatd", "ledger_client", "governance", "beat_rpc", "beat_lab")


def _check_toolchain():
    """Fail early, and say what to install, when the compiler or Python's headers are missing."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    if shutil.which(cc) is None:
        sys.exit(f"beat: the C compiler {cc!r} was not found; install one "
                 "(Debian/Ubuntu: apt-get install build-essential)")
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        sys.exit(f"beat: Python.h was not found in {include}; install the Python headers "
                 "(Debian/Ubuntu: apt-get install python3-dev)")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <stdint.h>\n#include <string.h>\nint main(void){return 0;}\n")
        r = subprocess.run([cc, src, "-o", os.path.join(tmp, "t")], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"beat: the C compiler {cc!r} cannot build a trivial program; install the C "
                     f"library headers (Debian/Ubuntu: apt-get install build-essential):\n{r.stderr}")


class BuildExt(build_ext):
    def run(self):
        _check_toolchain()
        super().run()


def extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.exit(f"beat: Cython {CYTHON_VERSION} is needed to build the fast path: "
                 f"pip install cython=={CYTHON_VERSION}")
    ext = Extension(
        "fastpath._native",
        sources=["fastpath/_native.pyx", "fastpath/src/beat_hash.c", "fastpath/src/beat_parse.c",
                 "fastpath/src/beat_pipe.c", "fastpath/src/beat_ring.c", "fastpath/src/beat_merkle.c",
                 "fastpath/src/beat_capfile.c"],
        include_dirs=["fastpath/include"],
        extra_compile_args=["-O3", "-std=gnu11", "-fno-strict-aliasing", "-Wall",
                            "-Wno-unused-function"],
    )
    return cythonize([ext], compiler_directives={"language_level": "3", "boundscheck": False,
                                                  "wraparound": False, "cdivision": True},
                     include_path=["fastpath/includes"])


setup(
    name="beat",
    version="0.1.0",
    description="BEAT: accountable and transparent infrastructure sharing (router agent)",
    # each role's package and its subpackages (beatd.store, ...), nothing else
    packages=find_packages(include=[q for p in PACKAGES for q in (p, p + ".*")]),
    package_data={"fastpath": ["*.pyx", "*.pxi", "*.pxd", "includes/*.pxd", "include/*.h", "src/*.c"],
                  "ledger_client": ["contracts/Beat.json", "contracts/Beat.sol"],
                  "beat_rpc": ["*.pyi"],
                  # read at run time with importlib.resources (beat_lab/data.py)
                  "beat_lab": ["topologies/*.toml", "topologies/README.md", "capture/r2.pcap",
                               "capture/r2.toml", "capture/make_capture.py"],
                  # the governance service's web page (governance/service/page.py)
                  "governance": ["service/static/*"]},
    # the documents, installed beside the programs (<prefix>/share/doc/beatd: in the unit's venv
    # /opt/beatd/venv/share/doc/beatd, which its Documentation= names)
    data_files=[("share/doc/beatd", ["README.md"] + sorted(glob.glob("docs/*.md"))),
                ("share/doc/beatd/packaging", ["packaging/README.md", "packaging/beatd.service",
                                               "packaging/beatd.toml"])],
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.11",
    install_requires=["lmdb>=1.4", "pycryptodome>=3.19,<4",
                      "prometheus-client>=0.20", "grpcio>=1.85.1",
                      "grpcio-health-checking>=1.85.1", "grpcio-reflection>=1.85.1",
                      "protobuf>=7.35.1", "cryptography>=50"],
    extras_require={
        # the namespace lab (beat-lab up|demo): exact packets built with scapy
        "lab": ["scapy>=2.5"],
        # the ethereum ledger backend (ledger_client/ethereum.py imports these four directly)
        "ethereum": ["web3>=7,<9", "eth-abi>=5", "eth-account>=0.13", "eth-utils>=5",
                     "requests>=2.31"],
    },
    entry_points={"console_scripts": ["beatd = beatd.cli:main", "beatctl = governance.cli:main",
                                      "beat-lab = beat_lab.cli:main"]},
)
