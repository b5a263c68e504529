"""The kernel's neighbour table (ARP/NDP) over rtnetlink, read and followed without a library:
``dump()`` reads the table (RTM_GETNEIGH, NLM_F_DUMP), ``EventSocket`` receives RTM_NEWNEIGH /
RTM_DELNEIGH and RTM_NEWLINK / RTM_DELLINK as the kernel sends them.

One ``recv`` is one datagram of whole messages, so ``poll`` on the socket is exact: nothing is held
back in a library's queue (pyroute2 0.9's IPRoute.get() keeps datagrams it read ahead in a queue
that poll cannot see, so the daemon saw each neighbour event only when the next one came: after a
link flap the relearned entry stayed unseen). An overrun of the socket's buffer (the kernel dropped
events: ENOBUFS) is reported as ``Overrun``: the caller reads the table again.

Only what the neighbour map needs is parsed: the family, interface index, NUD state, NDA_DST and
NDA_LLADDR of a neighbour message, the index of a link message.
"""
import errno
import os
import socket
import struct

__all__ = ["NeighEntry", "LinkEvent", "Overrun", "EventSocket", "dump", "parse", "usable_mac",
           "NUD_INCOMPLETE", "NUD_REACHABLE", "NUD_STALE", "NUD_DELAY", "NUD_PROBE", "NUD_FAILED",
           "NUD_NOARP", "NUD_PERMANENT", "state_name"]

NETLINK_ROUTE = 0
RTMGRP_LINK, RTMGRP_NEIGH = 0x1, 0x4
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_DUMP_INTR, NLM_F_DUMP = 0x1, 0x2, 0x10, 0x300
NDA_DST, NDA_LLADDR = 1, 2
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY = 0x01, 0x02, 0x04, 0x08
NUD_PROBE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x10, 0x20, 0x40, 0x80
# the states whose lladdr is the neighbour's (as last confirmed): REACHABLE, STALE (learned, not
# confirmed lately), DELAY and PROBE (being confirmed again), PERMANENT (set by hand). NOARP's
# lladdr is made up by the kernel (on an interface without ARP: the device's OWN MAC; for a
# multicast IP: the multicast MAC): never a neighbour's. INCOMPLETE and FAILED have none that holds.
USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT
_STATES = ((NUD_INCOMPLETE, "incomplete"), (NUD_REACHABLE, "reachable"), (NUD_STALE, "stale"),
           (NUD_DELAY, "delay"), (NUD_PROBE, "probe"), (NUD_FAILED, "failed"),
           (NUD_NOARP, "noarp"), (NUD_PERMANENT, "permanent"))
RCVBUF = 1 << 20

_NLMSGHDR = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=BxxxiHBB")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")


def state_name(state):
    """``"reachable"``, ``"stale|..."``: the NUD state bits by name (``"none"`` for 0)."""
    names = [n for bit, n in _STATES if state & bit]
    return "|".join(names) if names else "none"


class NeighEntry(tuple):
    """One RTM_NEWNEIGH / RTM_DELNEIGH: ``(deleted, ip, ifindex, state, lladdr)``; ``ip`` a
    normalised address string, ``lladdr`` bytes or None."""
    __slots__ = ()

    def __new__(cls, deleted, ip, ifindex, state, lladdr):
        return tuple.__new__(cls, (deleted, ip, ifindex, state, lladdr))

    deleted = property(lambda s: s[0])
    ip = property(lambda s: s[1])
    ifindex = property(lambda s: s[2])
    state = property(lambda s: s[3])
    lladdr = property(lambda s: s[4])


class LinkEvent(tuple):
    """One RTM_NEWLINK / RTM_DELLINK: ``(deleted, ifindex, flags)``."""
    __slots__ = ()

    def __new__(cls, deleted, ifindex, flags):
        return tuple.__new__(cls, (deleted, ifindex, flags))

    deleted = property(lambda s: s[0])
    ifindex = property(lambda s: s[1])
    flags = property(lambda s: s[2])


class Overrun(OSError):
    """The kernel dropped events for this socket (its buffer was full): read the table again."""


def usable_mac(entry):
    """The neighbour's MAC of a neighbour entry, or None: only a live entry (REACHABLE, STALE,
    DELAY, PROBE, PERMANENT) with a 6-byte unicast, non-zero lladdr names one."""
    mac = entry.lladdr
    if entry.deleted or not entry.state & USABLE or entry.state & NUD_NOARP or mac is None:
        return None
    if len(mac) != 6 or mac == bytes(6) or mac[0] & 1:
        return None
    return mac


def _attrs(data, off, end):
    out = {}
    while off + 4 <= end:
        alen, atype = _RTATTR.unpack_from(data, off)
        if alen < 4 or off + alen > end:
            break
        out.setdefault(atype & 0x3FFF, bytes(data[off + 4:off + alen]))
        off += (alen + 3) & ~3
    return out


def _neigh(mtype, data, off, end):
    if end - off < _NDMSG.size:
        return None
    family, ifindex, state, _flags, _type = _NDMSG.unpack_from(data, off)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None                     # bridge FDB entries and the like: no IP
    a = _attrs(data, off + _NDMSG.size, end)
    dst = a.get(NDA_DST)
    if dst is None or len(dst) != (4 if family == socket.AF_INET else 16):
        return None
    ip = socket.inet_ntop(family, dst)
    return NeighEntry(mtype == RTM_DELNEIGH, ip, ifindex, state, a.get(NDA_LLADDR))


def parse(data):
    """The messages of one netlink datagram: NeighEntry, LinkEvent, ``"done"``, ``Overrun``, or
    an ``OSError`` (an NLMSG_ERROR with a code); others are left out."""
    out = []
    off, n = 0, len(data)
    while off + _NLMSGHDR.size <= n:
        mlen, mtype, flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if mlen < _NLMSGHDR.size or off + mlen > n:
            break
        body, end = off + _NLMSGHDR.size, off + mlen
        if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
            e = _neigh(mtype, data, body, end)
            if e is not None:
                out.append(e)
        elif mtype in (RTM_NEWLINK, RTM_DELLINK) and end - body >= _IFINFOMSG.size:
            _fam, _type, index, ifflags, _change = _IFINFOMSG.unpack_from(data, body)
            out.append(LinkEvent(mtype == RTM_DELLINK, index, ifflags))
        elif mtype == NLMSG_DONE:
            out.append("intr" if flags & NLM_F_DUMP_INTR else "done")
        elif mtype == NLMSG_OVERRUN:
            out.append(Overrun(errno.ENOBUFS, "the kernel's neighbour events overran"))
        elif mtype == NLMSG_ERROR and end - body >= 4:
            code = -struct.unpack_from("=i", data, body)[0]
            if code:
                out.append(OSError(code, os.strerror(code)))
        off += (mlen + 3) & ~3
    return out


def _socket(groups=0):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        s.bind((0, groups))
    except BaseException:
        s.close()
        raise
    return s


def dump(timeout_s=5.0, attempts=3):
    """Every IPv4/IPv6 entry of the kernel's neighbour table, as NeighEntry. A dump the kernel
    marks interrupted (the table changed during it) is read again (up to ``attempts`` times)."""
    for _ in range(attempts):
        entries, interrupted = [], False
        with _socket() as s:
            s.settimeout(timeout_s)
            req = _NLMSGHDR.pack(_NLMSGHDR.size + _NDMSG.size, RTM_GETNEIGH,
                                 NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + _NDMSG.pack(0, 0, 0, 0, 0)
            s.sendto(req, (0, 0))
            done = False
            while not done:
                for m in parse(s.recv(1 << 16)):
                    if isinstance(m, NeighEntry):
                        entries.append(m)
                    elif m in ("done", "intr"):
                        interrupted = m == "intr"
                        done = True
                    elif isinstance(m, OSError):
                        raise m
        if not interrupted:
            return entries
    return entries


class EventSocket:
    """The kernel's neighbour and link events: ``fileno()`` for poll, ``read()`` the messages of
    one datagram (raises ``Overrun`` when the kernel dropped some: ENOBUFS)."""

    def __init__(self, groups=RTMGRP_NEIGH | RTMGRP_LINK, rcvbuf=None):
        self.sock = _socket(groups)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setblocking(False)

    def fileno(self):
        return self.sock.fileno()

    def read(self):
        """The messages of the next datagram ([] when there is none now)."""
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise Overrun(errno.ENOBUFS, "the kernel's neighbour events overran "
                              "(events were dropped)") from None
            raise
        out = parse(data)
        for m in out:
            if isinstance(m, Overrun):
                raise m
        return out

    def close(self):
        self.sock.close()
