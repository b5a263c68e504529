"""The ledger watcher's change marker (governance/service/watcher.py): a local ledger written by
another process (a device anchoring) is read again within a fraction of a second, not at the
next ``poll_s``; a quiet ledger is not read again before ``poll_s``."""
import os
import subprocess
import sys
import time

from conftest import REPO
from test_adv_verify_service import _wait
from governance.service import watcher as wmod
from governance.service.watcher import Watcher
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from ledger_client.types import Node

GOV_SEED = b"\x01" * 32

# another process writes one node to the ledger (as a device's anchor would: another LMDB user)
_WRITE = r"""
import sys
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from ledger_client.types import Node
led = LocalLedger(sys.argv[1])
gov = DeviceKey.from_seed(b"\x01" * 32)
led.register_node(Node(int(sys.argv[2]), "n", DeviceKey.from_seed(bytes([int(sys.argv[2])]) * 32).public),
                  signer=gov)
led.close()
"""


def _write_elsewhere(path, node):
    subprocess.run([sys.executable, "-c", _WRITE, path, str(node)], cwd=REPO, check=True,
                   env=dict(os.environ, PYTHONPATH=REPO), timeout=60)


def test_a_write_by_another_process_is_seen_within_a_tick_not_a_poll(tmp_path):
    path = str(tmp_path / "l.mdb")
    gov = DeviceKey.from_seed(GOV_SEED)
    led = LocalLedger(path, governance_pubkey=gov.public)
    led.register_node(Node(1, "a", DeviceKey.from_seed(b"\x02" * 32).public), signer=gov)
    w = Watcher(led, 30.0)                      # poll_s far beyond the test
    w.start()
    try:
        assert _wait(lambda: w.polls >= 1, 10)
        time.sleep(3 * wmod.MIN_POLL_S)
        assert w.polls == 1                     # quiet: not read again before poll_s
        _write_elsewhere(path, 5)
        t0 = time.monotonic()
        assert _wait(lambda: 5 in w.view.nodes, 10), "the other process's write not seen"
        seen_after = time.monotonic() - t0
        assert seen_after < 2.0, seen_after     # poll_s is 30 s
        polls = w.polls
        time.sleep(3 * wmod.MIN_POLL_S)
        assert w.polls == polls                 # quiet again
    finally:
        w.stop()
        led.close()


def test_a_ledger_without_a_marker_is_read_every_poll_s():
    class Ledger:                               # the ethereum backend's shape: no marker
        def slas(self):
            return []

        def nodes(self):
            return []

    w = Watcher(Ledger(), 0.3)
    assert w._marker_of is None
    w.start()
    try:
        assert _wait(lambda: w.polls >= 1, 5)
        t0, p0 = time.monotonic(), w.polls
        assert _wait(lambda: w.polls >= p0 + 3, 5)
        assert time.monotonic() - t0 >= 0.8     # three polls: ~0.9 s, not a tick each
    finally:
        w.stop()
