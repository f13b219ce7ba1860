"""Who is on the other end of a Unix socket (``SO_PEERCRED``) and whether they may use the bus."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def read_peercred(sock: Optional[socket.socket]) -> PeerCred:
    """The peer's pid/uid/gid; uid -1 when the platform cannot tell (then nobody is allowed but root)."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return PeerCred(-1, -1, -1)
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def _groups_of(uid: int, gid: int) -> set[int]:
    try:
        name = pwd.getpwuid(uid).pw_name
        return set(os.getgrouplist(name, gid))
    except KeyError:
        return {gid}


def peer_allowed(peer: PeerCred, allowed_users: list[str], allowed_groups: list[str]) -> bool:
    """Root, the daemon's own user, listed users (name or uid) and members of listed groups."""
    if peer.uid < 0:
        return False
    if peer.uid in (0, os.getuid()):
        return True
    for user in allowed_users:
        try:
            if (int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid) == peer.uid:
                return True
        except KeyError:
            continue
    wanted: set[int] = set()
    for group in allowed_groups:
        try:
            wanted.add(int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
        except KeyError:
            continue
    return bool(wanted & _groups_of(peer.uid, peer.gid))
