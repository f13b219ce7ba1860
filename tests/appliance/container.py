"""A Debian 12 container booted with systemd as PID 1 (systemd-nspawn -b), for the appliance tests.

The root file system (tests/appliance/make-rootfs.sh, cached under ~/.cache/edgebot/rootfs) is the
read-only lower layer of an overlay; each test run writes to its own upper layer, which survives a
stop and a second boot of the same container (the "after a reboot" check). Commands run inside with
``nsenter -t <the container's PID 1> -a``, which works on a host without systemd as PID 1, where the
container is started with ``--keep-unit --register=no``.

What is carried in from the host: its trusted CA certificates and its pip configuration (files and
``PIP_*`` variables, with the local paths they name bound read-only), so pip inside reaches the
package index the same way as the host does (a TLS-inspecting proxy, a local mirror).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
ROOTFS_SCRIPT = REPO / "tests" / "appliance" / "make-rootfs.sh"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def default_rootfs() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgebot" / "rootfs" / "debian12"


def make_rootfs(path: Path) -> float:
    """Make the cached root file system if it is not there; returns the seconds it took (0 when cached)."""
    t0 = time.monotonic()
    if (path / ".complete").exists():
        return 0.0
    subprocess.run(["bash", str(ROOTFS_SCRIPT), str(path)], check=True, timeout=1800)
    return time.monotonic() - t0


def pip_paths() -> list[str]:
    """Local paths the host's pip configuration names (find-links, file:// indexes, constraints, cert)."""
    found: set[str] = set()
    texts = [f"{k}={v}" for k, v in os.environ.items() if k.startswith("PIP_")]
    for conf in pip_config_files():
        texts.append(conf.read_text(errors="replace"))
    for text in texts:
        for m in re.finditer(r"(?:file://)?(/[^\s'\"=]+)", text):
            p = Path(m.group(1).rstrip("/"))
            while not p.exists() and p != p.parent:  # file:///opt/pypi/simple -> the existing /opt/pypi/simple
                p = p.parent
            if p.name == "simple":  # a PEP 503 index: its pages may link to files beside it (<root>/files/...)
                p = p.parent
            if p.exists() and str(p) != "/" and not str(p).startswith(("/etc/", "/root/", "/proc", "/sys", "/dev")):
                found.add(str(p))
    return sorted(found)


def pip_config_files() -> list[Path]:
    names = [Path("/etc/pip.conf"), Path.home() / ".config/pip/pip.conf", Path.home() / ".pip/pip.conf"]
    names += sorted(Path("/etc/xdg/pip").glob("*")) if Path("/etc/xdg/pip").is_dir() else []
    return [p for p in names if p.is_file()]


class Container:
    """One booted container over ``rootfs``; ``workdir`` holds its upper layer and logs."""

    def __init__(self, rootfs: Path, workdir: Path, name: str = "edgebot-test",
                 binds: Sequence[tuple[str, str]] = ()) -> None:
        self.rootfs = rootfs
        self.workdir = workdir
        self.name = name
        self.binds = list(binds)
        self.upper = workdir / "upper"
        self.merged = workdir / "merged"
        self.proc: Optional[subprocess.Popen] = None
        self.leader = 0
        self.boots = 0
        for d in (self.upper, workdir / "work", self.merged):
            d.mkdir(parents=True, exist_ok=True)

    # -- life cycle ---------------------------------------------------------------------------------

    def mount(self) -> None:
        if not os.path.ismount(self.merged):
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={self.rootfs},upperdir={self.upper},workdir={self.workdir / 'work'}",
                            str(self.merged)], check=True, timeout=60)

    def carry_host_config(self) -> None:
        """The host's CA bundle and pip configuration files, copied into the container."""
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if bundle.exists():
            shutil.copy2(bundle, self.merged / "etc/ssl/certs/ca-certificates.crt")
        for extra in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
            dest = self.merged / extra.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(extra, dest)
        for conf in pip_config_files():
            rel = conf.relative_to(Path.home()) if conf.is_relative_to(Path.home()) else None
            dest = self.merged / ("root" / rel if rel else conf.relative_to("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(conf, dest)

    def boot(self, timeout: float = 120.0) -> float:
        """Boot and wait until systemd reports running (or degraded); returns the seconds taken."""
        self.mount()
        self.carry_host_config()
        self.boots += 1
        log = open(self.workdir / f"console-{self.boots}.log", "wb")
        args = ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "-D", str(self.merged), "-M", self.name,
                "--capability=CAP_NET_ADMIN", "--console=pipe", "-b"]
        for src, dest in self.binds + [(p, p) for p in pip_paths()]:
            args.insert(-1, f"--bind-ro={src}:{dest}")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.leader = self._find_leader(t0 + 30)
        state = ""
        while time.monotonic() < t0 + timeout:
            r = self.run("systemctl", "is-system-running", check=False, timeout=30)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)  # polling the container's own readiness, bounded by the deadline
        raise RuntimeError(f"container did not boot (state {state!r}): {self.console()}")

    def _find_leader(self, deadline: float) -> int:
        """PID (on the host) of the container's systemd: the child of systemd-nspawn."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: {self.console()}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            for pid in pids:
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
                except OSError:
                    continue
            time.sleep(0.05)  # waiting for nspawn to fork its child, bounded by the deadline
        raise RuntimeError(f"no systemd inside the container: {self.console()}")

    def console(self) -> str:
        path = self.workdir / f"console-{self.boots}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def poweroff(self, timeout: float = 60.0) -> float:
        """Shut the container down cleanly (systemctl poweroff); returns the seconds taken."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.run("systemctl", "poweroff", check=False, timeout=30)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(30)
        return time.monotonic() - t0

    def destroy(self) -> None:
        self.poweroff()
        if os.path.ismount(self.merged):
            subprocess.run(["umount", str(self.merged)], check=False, timeout=60)

    # -- commands inside ----------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 120.0, user: Optional[str] = None,
            env: Optional[dict[str, str]] = None, input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside (all namespaces of PID 1), with a clean environment plus the host's
        ``PIP_*`` settings; as ``user`` through runuser."""
        base = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb",
                "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        base.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
        base.update(env or {})
        inner = list(cmd)
        if user:
            inner = ["runuser", "-u", user, "--", *inner]
        full = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *[f"{k}={v}" for k, v in base.items()], *inner]
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\nstdout: {r.stdout[-3000:]}\n"
                                 f"stderr: {r.stderr[-3000:]}")
        return r

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        out = self.run("systemctl", "show", unit, *[f"-p{p}" for p in props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(self, what: str, check, timeout: float = 60.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
        """Poll ``check()`` until it returns something true; that value, or TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)  # polling systemd's state from outside the container, bounded
        raise TimeoutError(f"{what}: not within {timeout} s (last: {last!r})")

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the container (through the overlay's merged view)."""
        dest = self.merged / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(mode)
