"""A short, bounded run of the atheris target fuzz/fuzz_capfile.py: the C capture reader and the
Python reference agree on any file."""
import os
import subprocess
import sys

import atheris  # noqa: F401  (installed in the venv: missing means fail, not skip)
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_fuzz_capfile_short(native, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "fuzz", "fuzz_capfile.py"),
                        "-runs=20000", "-seed=12345", "-max_len=2048",
                        f"-artifact_prefix={tmp_path}{os.sep}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, BEAT_FUZZ_TMP=str(tmp_path)))
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, f"fuzz target failed (exit {r.returncode}):\n{tail}"
    assert "Done 20000 runs" in r.stderr, tail
