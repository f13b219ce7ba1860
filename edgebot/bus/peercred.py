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


class AllowList:
    """Who may use the bus: root, the daemon's own user, listed users (names or uids) and members of
    listed groups (names or gids).

    Names are resolved once, here, with one pass over the user and group databases, so a long list
    costs nothing per connection (20,000 names looked up one by one took 5-8 s of the event loop for
    each unlisted client). A user or group created later is seen after a restart; group
    *membership* is read per connection, so adding a user to a listed group needs no restart."""

    def __init__(self, users: list[str], groups: list[str]) -> None:
        user_names = {u for u in users if not u.isdigit()}
        group_names = {g for g in groups if not g.isdigit()}
        self.uids = {int(u) for u in users if u.isdigit()}
        self.gids = {int(g) for g in groups if g.isdigit()}
        if user_names:
            self.uids |= {p.pw_uid for p in pwd.getpwall() if p.pw_name in user_names}
        if group_names:
            self.gids |= {g.gr_gid for g in grp.getgrall() if g.gr_name in group_names}

    def allows(self, peer: PeerCred) -> bool:
        if peer.uid < 0:
            return False
        if peer.uid in (0, os.getuid()) or peer.uid in self.uids:
            return True
        return bool(self.gids) and bool(self.gids & _groups_of(peer.uid, peer.gid))

