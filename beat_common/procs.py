"""Whether a process is alive, for every role that looks at another process by its pid (the store's
lock holder, the lab's daemons and ledger)."""
import os

__all__ = ["pid_alive"]


def pid_alive(pid):
    """Whether process ``pid`` exists and is not a zombie (one that exited and was not reaped yet
    holds no lock and serves nothing). A process of another user counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
