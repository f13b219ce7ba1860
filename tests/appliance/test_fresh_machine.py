"""The README's test command on a fresh machine, as a user without root or sudo: a new Debian 12
container (the same cached root file system as the appliance tests: no compiler, no PulseAudio, no
shellcheck), `./deploy/dev-setup.sh && .venv/bin/python -m pytest` as user `dev`. dev-setup cannot
install the Debian packages, so it prints the one apt-get line, and every test that needs one of them
must skip with that line as its reason: none may fail.

Long (the whole suite, inside the container): runs with ``EDGEBOT_APPLIANCE_FRESH=1`` only, by hand;
the llama-cpp-python wheel dev-setup built on the host is bound in, as its cache would be.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import APT_LINE
from container import Container, default_rootfs, make_rootfs
from test_appliance import copy_source, llama_wheel, requirements

pytestmark = [pytest.mark.timeout(5400)]


@pytest.fixture
def fresh() -> Iterator[Container]:
    why = requirements()
    if why or os.environ.get("EDGEBOT_APPLIANCE_FRESH") != "1":
        pytest.skip(why or "set EDGEBOT_APPLIANCE_FRESH=1 (with EDGEBOT_APPLIANCE=1) to run the whole suite in a "
                           "fresh container as a user without sudo (tens of minutes)")
    wheel = llama_wheel()
    rootfs = Path(os.environ.get("EDGEBOT_ROOTFS", default_rootfs()))
    make_rootfs(rootfs)
    base = Path(os.environ.get("EDGEBOT_APPLIANCE_WORKDIR", "/var/tmp/edgebot-appliance"))
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=time.strftime("fresh-%Y%m%d-%H%M%S-"), dir=base))
    c = Container(rootfs, work, name="edgebot-fresh",
                  binds=[(str(wheel.parent), f"/home/dev/.cache/edgebot/wheels/{wheel.parent.name}")])
    c.mount()
    copy_source(c.merged / "home/dev/edgebot")
    try:
        c.boot()
        c.run("useradd", "-M", "-d", "/home/dev", "-s", "/bin/bash", "dev")
        c.run("chown", "-R", "dev:dev", "/home/dev/edgebot")  # not the wheel cache: bound in read-only
        c.run("chown", "dev:dev", "/home/dev", "/home/dev/.cache", "/home/dev/.cache/edgebot",
              "/home/dev/.cache/edgebot/wheels")
        yield c
    finally:
        c.destroy()
        print(f"\nfresh machine: kept {work}")


def test_the_readme_test_command_passes_without_root(fresh: Container) -> None:
    t0 = time.monotonic()
    r = fresh.run("bash", "-c", "cd ~/edgebot && ./deploy/dev-setup.sh && .venv/bin/python -m pytest -q -rs "
                  "-vv -p no:cacheprovider", user="dev", env={"HOME": "/home/dev"}, check=False, timeout=5400)
    elapsed = time.monotonic() - t0
    (fresh.workdir / "output.txt").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    print(f"\nfresh machine, user dev, no sudo: {summary} ({elapsed:.0f} s; output in {fresh.workdir}/output.txt)")
    assert "dev-setup: missing Debian packages: " in r.stdout and APT_LINE in r.stdout, r.stdout[-3000:]
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary and "error" not in summary, summary
    skips = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    for line in skips:  # a skip for a missing system package gives the one apt-get line
        if re.search(r"(missing|need)\b.*\b(command|systemd|shellcheck|gcc|pulseaudio)", line):
            assert "sudo apt-get install -y --no-install-recommends" in line, line
    assert any("test_the_speaker_vanishing_and_coming_back" in line for line in r.stdout.splitlines()
               if "SKIPPED" in line), "the speaker test did not skip"
