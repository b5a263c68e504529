"""Run a command under the sandbox packaging/beatd.service asks systemd for, without systemd (this
machine runs none): the test starts it as root through ``setpriv`` (a non-root user, the unit's
ambient and bounding capabilities, no new privileges) inside a mount namespace whose /proc is
``subset=pid,hidepid=invisible`` (ProcSubset=pid, ProtectProc=invisible); this script, already
unprivileged, adds what needs no privilege and then executes the command:

- ``--mdwe``: MemoryDenyWriteExecute=yes, as the kernel's ``PR_SET_MDWE`` (REFUSE_EXEC_GAIN):
  no mapping may be writable and executable, inherited across execve;
- ``--allow FILE``: SystemCallFilter=, the allowed system calls (one name a line; the test
  expands the unit's groups with ``systemd-analyze syscall-filter``), any other call failing with
  ``--errno`` (SystemCallErrorNumber=), installed with libseccomp.

``python unit_sandbox.py [--mdwe] [--allow FILE --errno EPERM] -- COMMAND ARGS...``
"""
import argparse
import ctypes
import ctypes.util
import errno
import os
import sys

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(code):
    return 0x00050000 | (code & 0xFFFF)


def set_mdwe():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        sys.exit(f"unit_sandbox: prctl(PR_SET_MDWE): {os.strerror(e)}")


def load_filter(names, code):
    path = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                     ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(scmp_act_errno(code))
    if not ctx:
        sys.exit("unit_sandbox: seccomp_init failed")
    allowed = 0
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:                      # not a system call of this architecture
            continue
        rc = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0)
        if rc != 0 and rc != -errno.EEXIST:
            sys.exit(f"unit_sandbox: seccomp_rule_add({name}): {os.strerror(-rc)}")
        allowed += 1
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        sys.exit(f"unit_sandbox: seccomp_load: {os.strerror(-rc)}")
    return allowed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mdwe", action="store_true")
    p.add_argument("--allow", metavar="FILE")
    p.add_argument("--errno", default="EPERM")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        sys.exit("unit_sandbox: no command")
    if a.mdwe:
        set_mdwe()
    if a.allow:
        with open(a.allow) as f:
            names = [x.strip() for x in f if x.strip()]
        load_filter(names, getattr(errno, a.errno))
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
