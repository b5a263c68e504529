"""A short, bounded run of the atheris target fuzz/fuzz_parser.py: the twins agree on any input."""
import os
import subprocess
import sys

import atheris  # noqa: F401  (installed in the venv: missing means fail, not skip)
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_fuzz_short(native, tmp_path):
    env = dict(os.environ)
    env.pop("BEAT_FUZZ_IGNORE", None)            # nothing is set aside here
    r = subprocess.run([sys.executable, os.path.join(ROOT, "fuzz", "fuzz_parser.py"),
                        "-runs=20000", "-seed=12345", "-max_len=2048",
                        f"-artifact_prefix={tmp_path}{os.sep}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, f"fuzz target failed (exit {r.returncode}):\n{tail}"
    assert "Done 20000 runs" in r.stderr, tail
