"""Is the bus socket's directory safe to trust? One check for edgebotd (before it binds) and every
client (before it connects), as ssh-agent and OpenSSH check their socket and key directories.

Without ``XDG_RUNTIME_DIR`` the development fallback puts the socket in ``<tmp>/edgebot-<uid>/``;
another user who creates that directory first could put their own socket there, and the CLI would
print their answers, a bridge would run their actions. So every directory from the socket's up to
``/`` must be owned by root, by this user, or by the ``edgebot`` service user, and the socket's own
directory must not be writable by group or others (an ancestor may be, when it is sticky, like
``/tmp``: then nobody else can rename or remove what is in it).
"""

from __future__ import annotations

import os
import pwd
import stat


class UnsafeSocketDir(OSError):
    """The socket's directory could let another user replace the socket; the message says how to fix it."""


SERVICE_USER = "edgebot"


def _trusted_uids() -> set[int]:
    uids = {0, os.geteuid()}
    try:
        uids.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    except KeyError:
        pass
    return uids


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def unsafe_reason(path: str) -> "str | None":
    """Why the directories holding socket ``path`` cannot be trusted, or None when they can.
    Directories that do not exist yet are skipped (edgebotd creates them, mode 0755)."""
    trusted = _trusted_uids()
    directory = os.path.dirname(os.path.abspath(path))
    first = True
    while True:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            return f"cannot check {directory}: {exc.strerror or exc}"
        if st is not None:
            if st.st_uid not in trusted:
                return f"{directory} is owned by {_owner(st.st_uid)}, not by you, root or '{SERVICE_USER}'"
            writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            if writable and (first or not st.st_mode & stat.S_ISVTX):
                who = "group and others" if writable == stat.S_IWGRP | stat.S_IWOTH else \
                    "its group" if writable == stat.S_IWGRP else "others"
                return f"{directory} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
        first = False  # a socket directory still to be made is made 0755; its parent may be sticky
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def check_socket_dir(path: str) -> None:
    """Raise :class:`UnsafeSocketDir` (saying how to fix it) when ``path``'s directories are unsafe."""
    why = unsafe_reason(path)
    if why is None:
        return
    raise UnsafeSocketDir(
        f"refusing the bus socket {path}: {why}, so another user could put an impostor socket there. "
        f"Fix: remove that directory if you did not make it (or chown it to yourself and chmod go-w), or "
        f"set XDG_RUNTIME_DIR (a private per-user directory) or --socket / EDGEBOT_SOCKET to a path in a "
        f"directory only you and root can write.")
