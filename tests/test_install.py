"""deploy/install.sh: shellcheck, the --dry-run plan for every board, early failures, and a real
idempotent run of the file steps into a scratch root (--root: sysusers, tmpfiles, units, rules,
config). apt, the venv build, model downloads and systemctl are only planned here (a board does them)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import APT_LINE, NEEDS_ROOT
from edgebot.config import load_config
from edgebot.engine.backends import rkllm_api as api

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"
BOARDS = sorted(p.stem for p in (REPO / "board-configs").glob("*.toml"))
ARCH = {"generic-x86": "x86_64"}


def fake_system(tmp: Path, os_id: str = "debian", version: str = "12", mem_kb: int = 8_000_000,
                npu_driver: str = "RKNPU driver: v0.9.8") -> dict[str, str]:
    """Files describing a system to install.sh (its documented EDGEBOT_OS_RELEASE/MEMINFO/RKNPU_FILES overrides)."""
    (tmp / "os-release").write_text(f'ID={os_id}\nVERSION_ID="{version}"\n')
    (tmp / "meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemAvailable:   {mem_kb // 2} kB\n")
    (tmp / "rknpu-version").write_text(npu_driver + "\n")  # what /sys/kernel/debug/rknpu/version says
    return {"EDGEBOT_OS_RELEASE": str(tmp / "os-release"), "EDGEBOT_MEMINFO": str(tmp / "meminfo"),
            "EDGEBOT_RKNPU_FILES": f"{tmp}/no-such-file {tmp}/rknpu-version"}


def install(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason=f"shellcheck missing: {APT_LINE}")
def test_deploy_scripts_are_shellcheck_clean() -> None:
    scripts = sorted(str(p) for pattern in ("deploy/*.sh", "tests/appliance/*.sh", "tests/boards/*.sh")
                     for p in REPO.glob(pattern))
    assert str(INSTALL) in scripts and len(scripts) >= 6
    r = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("board", BOARDS)
def test_dry_run_plan_for_every_board(tmp_path: Path, board: str) -> None:
    env = {**fake_system(tmp_path), "EDGEBOT_ARCH": ARCH.get(board, "aarch64")}
    r = install(board, "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    profile = load_config(None, board=board, environ={})
    cmake = profile.get("build", "cmake_args")
    assert f"CMAKE_ARGS={cmake}" in out and cmake  # the board's own build flags, verbatim
    assert "llama-cpp-python==" in out and "--no-binary llama-cpp-python" in out
    if "GGML_BLAS=ON" in cmake:
        assert "libopenblas-dev" in out
    svc = profile.section("service")
    for key, directive in (("memory_max", "MemoryMax"), ("cpu_affinity", "CPUAffinity")):
        shown = f"    | {directive}={svc[key]}"
        assert (shown in out) == bool(svc[key]), directive
    for unit in ("edgebot.socket", "edgebot.service", "edgebot-serial@.service", "edgebot-speech-in.service",
                 "edgebot-speech-out.service", "edgebot-mqtt.service", "edgebot-wyoming.service"):
        assert f"/etc/systemd/system/{unit}" in out
    assert "/etc/udev/rules.d/70-edgebot-serial.rules" in out
    assert f'    | board = "{board}"' in out  # the generated /etc/edgebot/edgebot.toml
    if profile.get("llm", "backend") != "rkllm":  # the NPU's .rkllm model is converted and copied by hand
        assert "model pull deepseek-r1-distill-qwen-1.5b-q4_k_m vosk-small-en piper-en-lessac-medium" in out
    assert "would run: systemctl enable --now edgebot.socket edgebot.service edgebot-speech-in.service" in out
    # nothing outside the plan happened: every action line is a "would"
    assert not re.search(r"^    run: ", out, re.M)
    assert out.rstrip().endswith("dry run done: the steps above marked 'would' are what a real run does")


def test_dry_run_options(tmp_path: Path) -> None:
    env = {**fake_system(tmp_path, mem_kb=2_000_000), "EDGEBOT_ARCH": "aarch64"}
    r = install("rpi4", "--dry-run", "--no-voice", "--lang", "zh", env=env)
    assert r.returncode == 0, r.stderr
    assert "speech-in.service" not in r.stdout.split("enable at boot")[1]
    assert "model pull deepseek-r1-distill-qwen-1.5b-q4_k_m\n" in r.stdout  # no voices without voice
    assert "    | n_ctx = 2048" in r.stdout  # a 1953 MiB board gets the small context
    r = install("rpi5", "--dry-run", "--lang", "zh", "--no-models", env={**env, **fake_system(tmp_path)})
    assert "skipped (--no-models)" in r.stdout and "would run: /opt/edgebot/venv/bin/edgebot-cli model pull" not in r.stdout


@pytest.mark.parametrize("args, system, extra, code, message", [
    ((), {}, {}, 2, "no board name given"),
    (("rpi6",), {}, {}, 2, "unknown board 'rpi6'; known boards: generic-x86 rk3588-npu rk3588 rpi4 rpi5"),
    (("rpi5", "--frobnicate"), {}, {}, 2, "unknown option --frobnicate"),
    (("rpi5",), {"os_id": "fedora", "version": "40"}, {}, 1, "unsupported OS 'fedora'"),
    (("rpi5",), {"os_id": "debian", "version": "11"}, {}, 1, "Debian/Raspberry Pi OS 11 is too old"),
    (("rpi5",), {"os_id": "ubuntu", "version": "20.04"}, {}, 1, "Ubuntu 20.04 is too old"),
    (("rpi5",), {"mem_kb": 900_000}, {}, 1, "only 878 MiB of memory; the model needs at least 1800 MiB"),
    (("rpi5",), {}, {"EDGEBOT_ARCH": "x86_64"}, 1, "board rpi5 needs a aarch64 system, this one is x86_64"),
    (("rpi5",), {}, {"EDGEBOT_ARCH": "armv7l"}, 1, "install the 64-bit Raspberry Pi OS"),
    (("rpi5",), {}, {"EDGEBOT_FREE_MB": "500"}, 1, "only 500 MiB free on /var/lib; 2766 MiB are needed"),
    (("rpi5", "--npu"), {}, {}, 2, "--npu is for the rk3588 board only"),
    (("rk3588", "--npu-runtime", "x.so"), {}, {}, 2, "--npu-runtime goes with --npu"),
    (("rk3588", "--npu"), {"npu_driver": "0.9.6"}, {}, 1,
     "the RKNPU driver is 0.9.6 ({tmp}/rknpu-version), too old: RKLLM runtime 1.3.0 needs 0.9.8 or later"),
    (("rk3588-npu",), {"npu_driver": "no version here"}, {}, 1, "no RKNPU kernel driver found"),
])
def test_fails_early_and_clearly(tmp_path: Path, args: tuple[str, ...], system: dict, extra: dict, code: int,
                                 message: str) -> None:
    env = {**fake_system(tmp_path, **system), "EDGEBOT_ARCH": "aarch64", **extra}
    r = install(*args, "--dry-run", env=env)
    assert r.returncode == code, r.stdout + r.stderr
    assert message.format(tmp=tmp_path) in r.stderr
    assert "would run" not in r.stdout  # failed before planning any change


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason=f"systemd-sysusers missing: {APT_LINE}")
@NEEDS_ROOT
def test_second_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    env = {**fake_system(tmp_path), "EDGEBOT_ARCH": "aarch64"}
    first = install("rk3588", "--root", str(root), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "edgebot:" in (root / "etc" / "passwd").read_text()
    assert (root / "etc/systemd/system/edgebot.service").read_text() == (REPO / "systemd/edgebot.service").read_text()
    dropin = (root / "etc/systemd/system/edgebot.service.d/board.conf").read_text()
    assert "MemoryMax=75%\n" in dropin and "CPUAffinity=4-7\n" in dropin
    conf = root / "etc/edgebot/edgebot.toml"
    assert load_config(conf, environ={}).board == "rk3588"  # the generated config is valid
    assert (root / "var/lib/edgebot/models").is_dir()
    assert (root / "opt/edgebot/board-configs/rk3588.toml").is_file()
    conf.write_text(conf.read_text() + "# edited by the teacher\n")
    second = install("rk3588", "--root", str(root), env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "    run: " not in second.stdout, second.stdout
    assert "kept as it is (never overwritten)" in second.stdout
    assert second.stdout.rstrip().endswith("is already installed as asked (no changes)")
    assert conf.read_text().endswith("# edited by the teacher\n")


def test_npu_dry_run_plans_the_runtime_and_checks_the_driver(tmp_path: Path) -> None:
    env = {**fake_system(tmp_path), "EDGEBOT_ARCH": "aarch64"}
    r = install("rk3588", "--npu", "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "DRY RUN for rk3588-npu" in out and '    | board = "rk3588-npu"' in out  # the NPU profile
    assert f"NPU driver: rknpu 0.9.8 ({tmp_path}/rknpu-version; at least 0.9.8 needed)" in out
    assert (f"would install https://github.com/airockchip/rknn-llm/raw/{api.RUNTIME_TAG}/rkllm-runtime/Linux/"
            f"librkllm_api/aarch64/librkllmrt.so as /usr/local/lib/librkllmrt.so after checking its git blob id is "
            f"{api.LIBRARY_BLOBS['aarch64']}") in out
    assert "would run: ldconfig" in out and " curl" in out.split("==> apt packages")[1].split("==>")[0]
    assert "model pull vosk-small-en piper-en-lessac-medium" in out  # voices only: the .rkllm is copied by hand
    assert "/var/lib/edgebot/models/DeepSeek-R1-Distill-Qwen-1.5B_W8A8_RK3588.rkllm (docs/npu.md)" in out
    assert not re.search(r"^    run: ", out, re.M)
    local = tmp_path / "librkllmrt.so"
    local.write_bytes(b"not the runtime\0 \xff")
    r = install("rk3588-npu", "--npu-runtime", str(local), "--no-voice", "--dry-run", env=env)
    data = local.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # what `git hash-object` prints
    assert r.returncode == 1 and "would" not in r.stdout  # refused before planning anything
    assert (f"{local} is not the RKLLM runtime 1.3.0 build edgebot is written against (its git blob id is {blob}, "
            f"not {api.LIBRARY_BLOBS['aarch64']})") in r.stderr
    r = install("rk3588-npu", "--no-voice", "--dry-run", env=env)
    assert r.returncode == 0 and "model pull" not in r.stdout  # no GGUF and no voices
    profile = load_config(None, board="rk3588-npu", environ={})
    assert profile.get("llm", "backend") == "rkllm" and profile.get("rkllm", "library") == "/usr/local/lib/librkllmrt.so"


def test_install_pins_the_same_runtime_as_the_bindings() -> None:
    text = INSTALL.read_text()
    pins = dict(re.findall(r"^(RKLLM_VERSION|RKLLM_TAG|RKLLM_BLOB|MIN_NPU_DRIVER)=(\S+)$", text, re.M))
    assert pins == {"RKLLM_VERSION": api.RUNTIME_VERSION, "RKLLM_TAG": api.RUNTIME_TAG,
                    "RKLLM_BLOB": api.LIBRARY_BLOBS["aarch64"], "MIN_NPU_DRIVER": api.MIN_DRIVER}


def test_no_models_enables_without_starting(tmp_path: Path) -> None:
    env = {**fake_system(tmp_path), "EDGEBOT_ARCH": "aarch64"}
    r = install("rpi5", "--dry-run", "--no-models", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("==> enable at boot and start")[1]
    assert "would run: systemctl enable edgebot.service edgebot-speech-in.service edgebot-speech-out.service\n" in out
    assert "would run: systemctl enable --now edgebot.socket\n" in out  # the bus is there; edgebotd is not started
    assert "then: sudo systemctl start edgebot.service edgebot-speech-in.service edgebot-speech-out.service" in out


def test_wheel_installs_the_prebuilt_llama_without_a_compiler(tmp_path: Path) -> None:
    env = {**fake_system(tmp_path), "EDGEBOT_ARCH": "aarch64"}
    wheel = tmp_path / "llama_cpp_python-0.3.36-cp311-cp311-linux_aarch64.whl"
    wheel.write_bytes(b"PK\x05\x06" + bytes(18))
    r = install("rpi5", "--dry-run", "--wheel", str(wheel), env=env)
    assert r.returncode == 0, r.stderr
    assert f"pip install --no-cache-dir --force-reinstall --no-deps {wheel}\n" in r.stdout
    assert "--no-binary llama-cpp-python" not in r.stdout
    wanted = re.search(r"wanted: (.*)", r.stdout).group(1).split()
    assert "build-essential" not in wanted and "cmake" not in wanted and "libgomp1" in wanted
    other = tmp_path / "llama_cpp_python-0.3.20-cp311-cp311-linux_aarch64.whl"
    other.write_bytes(b"")
    r = install("rpi5", "--dry-run", "--wheel", str(other), env=env)
    assert r.returncode == 2 and "is not a llama_cpp_python-0.3.36-*.whl" in r.stderr
    r = install("rpi5", "--dry-run", "--wheel", str(tmp_path / "nope.whl"), env=env)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_http_plans_the_extra_the_config_and_the_network_dropin(tmp_path: Path) -> None:
    env = {**fake_system(tmp_path), "EDGEBOT_ARCH": "aarch64"}
    r = install("rpi5", "--dry-run", "--http", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "[serial,mqtt,wyoming,voice,http]" in r.stdout
    assert "    | [http]\n" in r.stdout and "    | enabled = true\n" in r.stdout
    assert "would write /etc/systemd/system/edgebot.service.d/network.conf:" in r.stdout
    assert "    | PrivateNetwork=no\n    | RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n" \
           "    | IPAddressAllow=localhost\n" in r.stdout
    r = install("rpi5", "--dry-run", env=env)
    assert "network.conf" not in r.stdout and "no network for edgebotd" in r.stdout


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason=f"systemd-sysusers missing: {APT_LINE}")
@NEEDS_ROOT
def test_network_dropin_follows_the_config_and_commands_go_on_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    env = {**fake_system(tmp_path), "EDGEBOT_ARCH": "aarch64"}
    first = install("rpi5", "--root", str(root), "--http", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    for c in ("edgebot-cli", "edgebotd", "edgebot-serial", "edgebot-speech-in", "edgebot-speech-out"):
        assert os.readlink(root / "usr/local/bin" / c) == f"/opt/edgebot/venv/bin/{c}"
    dropin = root / "etc/systemd/system/edgebot.service.d/network.conf"
    assert "IPAddressAllow=localhost\n" in dropin.read_text()
    conf = root / "etc/edgebot/edgebot.toml"
    assert load_config(conf, environ={}).get("http", "enabled") is True
    again = install("rpi5", "--root", str(root), "--http", env=env)
    assert again.stdout.rstrip().endswith("(no changes)"), again.stdout
    # a LAN address (with its token) widens the drop-in to the private ranges, never the internet
    conf.write_text(conf.read_text().replace("enabled = true", 'enabled = true\nhost = "0.0.0.0"\ntoken = "s3cret"'))
    lan = install("rpi5", "--root", str(root), env=env)
    assert lan.returncode == 0, lan.stderr
    assert lan.stdout.rstrip().endswith("install.sh: done. Check it with: edgebot-cli doctor   (ask: edgebot-cli ask \"Hello\")"), \
        lan.stdout  # a changed drop-in is a change (it was lost in a pipe's subshell: "no changes", no daemon-reload)
    assert "IPAddressAllow=localhost link-local 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7\n" in dropin.read_text()
    # the remote backend needs the LAN too; a config without either removes the drop-in again
    conf.write_text('board = "rpi5"\n[llm]\nbackend = "remote"\nremote_url = "http://192.168.1.20:8000/v1"\n')
    remote = install("rpi5", "--root", str(root), env=env)
    assert remote.returncode == 0 and "network for edgebotd: lan only" in remote.stdout, remote.stdout
    conf.write_text('board = "rpi5"\n')
    plain = install("rpi5", "--root", str(root), env=env)
    assert plain.returncode == 0 and not dropin.exists() and "run: rm -f" in plain.stdout


def test_one_list_of_test_packages() -> None:
    """deploy/test-packages.txt is the only list: .ci/run and dev-setup.sh read it, and it names what the
    skip reasons promise (systemd, shellcheck, PulseAudio)."""
    for script in (REPO / ".ci" / "run", REPO / "deploy" / "dev-setup.sh"):
        text = script.read_text()
        assert "deploy/test-packages.txt" in text, script
        assert not re.search(r"apt-get install[^\n$]*\b(shellcheck|pulseaudio|espeak-ng)\b", text), script
    assert APT_LINE.startswith("sudo apt-get install -y --no-install-recommends build-essential cmake python3-venv ")
    for pkg in ("systemd", "shellcheck", "pulseaudio", "espeak-ng", "libportaudio2"):
        assert f" {pkg} " in APT_LINE + " "
