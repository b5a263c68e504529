"""The control socket: a unix stream socket where ``beatd status`` asks the running daemon.

Protocol: one request line (``status``), one JSON line back, then the daemon closes the connection.
An unknown request gets ``{"error": ...}``. The socket is created mode 0660 (the daemon's group may
ask); a stale socket file left by a crash is replaced, a live one (another beatd) is an error.
"""
import json
import os
import socket
import socketserver
import threading

__all__ = ["ControlServer", "ControlError", "request"]


class ControlError(Exception):
    """The socket cannot be created, or no daemon answers on it; the message names the path."""


class _Handler(socketserver.StreamRequestHandler):
    timeout = 2.0

    def handle(self):
        try:
            line = self.rfile.readline(4096).decode("ascii", "replace").strip()
        except OSError:
            return
        if line.startswith("test-inject ") and self.server.inject is not None:
            try:
                reply = self.server.inject(line[len("test-inject "):])
            except Exception as exc:  # noqa: BLE001 (test only; the reply says so)
                reply = {"error": f"test-inject failed: {exc!r}"}
        elif line == "status":
            try:
                reply = self.server.status()
            except Exception as exc:  # noqa: BLE001 (the reply says so; the daemon carries on)
                reply = {"error": f"status failed: {exc!r}"}
        else:
            reply = {"error": f"unknown request {line!r} (known: status)"}
        try:
            self.wfile.write(json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n")
        except OSError:
            pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ControlServer:
    """Serves ``status()`` (a callable returning a JSON-able dict) on the unix socket ``path``."""

    def __init__(self, path, status, inject=None):
        self.path = path
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        except OSError as exc:
            raise ControlError(f"daemon.control_socket: {path}: cannot create its directory: "
                               f"{exc.strerror or exc}") from None
        if os.path.exists(path):
            try:
                request(path, timeout=0.5)
            except ControlError:
                os.unlink(path)         # stale: nobody answers
            else:
                raise ControlError(f"daemon.control_socket: {path}: another beatd answers there")
        old = os.umask(0o117)
        try:
            self._server = _Server(path, _Handler)
        except OSError as exc:
            raise ControlError(f"daemon.control_socket: {path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        self._server.status = status
        self._server.inject = inject        # TEST ONLY (beatd run --testing-allow-inject)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, name="beatd-control",
                                        daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=1.0)
        try:
            os.unlink(self.path)
        except OSError:
            pass


def request(path, what="status", timeout=2.0):
    """Ask the daemon on ``path``; returns the decoded JSON reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(what.encode() + b"\n")
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    except FileNotFoundError:
        raise ControlError(f"{path}: no such socket: is beatd running?") from None
    except ConnectionRefusedError:
        raise ControlError(f"{path}: connection refused: beatd is not running") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    finally:
        s.close()
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"{path}: the answer is not JSON") from None
