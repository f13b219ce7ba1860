"""edgebotd: wires configuration, the engine, the bus hub and systemd notification together."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
from typing import Any, Optional, Sequence

import edgebot
from edgebot import systemd
from edgebot.bus import codec
from edgebot.bus import messages as m
from edgebot.bus.hub import Hub, Limits
from edgebot.bus.tap import BusTap
from edgebot.config import Config, ConfigError, load_config
from edgebot.dispatch import Dispatcher
from edgebot.engine.backend import Backend, SamplingParams
from edgebot.engine.backends.llama import LlamaBackend
from edgebot.engine.backends.remote import RemoteBackend
from edgebot.engine.jobs import EngineSettings
from edgebot.engine.scheduler import Engine

log = logging.getLogger(__name__)

EX_CONFIG = 78  # sysexits.h: configuration error (also a missing/bad model file); the unit does not restart on it
# Fault injection for tests: the model is loaded only after a line can be read from this FIFO, as if
# it came from a very slow SD card (tests/test_activation.py); never set in production.
FAULT_HOLD_LOAD_ENV = "EDGEBOT_FAULT_HOLD_LOAD"


def llama_or_remote(config: Config) -> Backend:
    """``[llm] backend`` llama: the on-board model; remote: an OpenAI-compatible server, with the
    board's model loaded as its fallback when ``[llm] fallback = "local"``."""
    llm = config.section("llm")
    local: Optional[Backend] = None
    if llm["backend"] != "remote" or llm["fallback"] == "local":
        eng = config.section("engine")
        local = LlamaBackend(llm["model"], n_ctx=llm["n_ctx"], n_threads=llm["n_threads"], n_batch=llm["n_batch"],
                             use_mmap=llm["use_mmap"], use_mlock=llm["use_mlock"],
                             sequences=eng["sequences"] + eng["parallel"], kv_tokens=eng["kv_tokens"],
                             kv_per_sequence=eng["kv_per_sequence"], saved_sessions_mib=eng["saved_sessions_mib"])
    if llm["backend"] != "remote":
        assert local is not None
        return local
    return RemoteBackend(llm["remote_url"], llm["remote_model"], api_key=llm["remote_api_key"],
                         timeout_s=llm["remote_timeout_s"], retry_s=llm["remote_retry_s"], local=local,
                         n_ctx=llm["n_ctx"])


def build_engine(config: Config, on_state: object) -> Engine:
    llm, eng = config.section("llm"), config.section("engine")
    sampling = SamplingParams(temperature=llm["temperature"], top_p=llm["top_p"], top_k=llm["top_k"], seed=llm["seed"])
    backend: Backend
    if llm["backend"] == "rkllm":  # the RK3588 NPU (docs/npu.md); imported only when chosen
        from edgebot.engine.backends.rkllm import RkllmBackend

        rk = config.section("rkllm")
        backend = RkllmBackend(llm["model"], library=rk["library"], n_ctx=llm["n_ctx"], cpus=rk["cpus"],
                               sampling=sampling)
    else:
        backend = llama_or_remote(config)
    settings = EngineSettings(
        sampling=sampling,
        queue_max=eng["queue_max"], session_idle_s=eng["session_idle_s"], max_sessions=eng["max_sessions"],
        answer_reserve=eng["answer_reserve"],
        persona=llm["persona"], stall_s=config.get("daemon", "stall_s"), parallel=eng["parallel"])
    return Engine(backend, settings, on_state)  # type: ignore[arg-type]


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (systemd's default soft limit is 1,024, which
    sockets reach quickly: a thousand half-open HTTP connections once locked every bus client out).
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, want, exc)
        return soft
    return want


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loaded: asyncio.Future[tuple[str, str]] = loop.create_future()

    def on_state(state: str, message: str) -> None:  # engine thread
        def apply() -> None:
            if state == "loading":
                systemd.notify(f"STATUS={message}")
            elif state in ("ready", "failed") and not loaded.done():
                loaded.set_result((state, message))
        loop.call_soon_threadsafe(apply)

    engine = build_engine(config, on_state)
    dispatcher = Dispatcher(config, engine, loop)
    bus = config.section("bus")
    hub = Hub(dispatcher.handle, Limits(bus["max_line_bytes"], bus["client_queue_max"], bus["client_rate"],
                                        bus["client_burst"], bus["first_message_s"], bus["max_clients"],
                                        bus["max_clients_per_uid"]),
              bus["allowed_users"], bus["allowed_groups"], on_disconnect=dispatcher.disconnected)
    dispatcher.hub = hub
    try:
        inherited = systemd.listen_sockets()
    except OSError as exc:
        log.error("socket activation: %s", exc)
        return EX_CONFIG
    try:
        await hub.start(config.socket_path, inherited[0] if inherited else None)
    except OSError as exc:
        log.error("cannot open the bus socket %s: %s", config.socket_path, exc)
        return EX_CONFIG
    http_api = None
    if config.get("http", "enabled"):  # aiohttp is imported only then (the `http` extra)
        http_api = await _start_http(config, engine, dispatcher.asks, BusTap(hub))
        if http_api is None:
            await hub.close()
            return EX_CONFIG
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hold = os.environ.get(FAULT_HOLD_LOAD_ENV)
    if hold:
        log.warning("%s=%s: loading the model only once that FIFO is written (fault injection)", FAULT_HOLD_LOAD_ENV,
                    hold)
        holding = asyncio.ensure_future(asyncio.to_thread(_read_fifo, hold))
        await asyncio.wait({holding, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    engine.start()
    watchdog: Optional[asyncio.Task[None]] = None
    interval = systemd.watchdog_interval() if config.get("daemon", "watchdog") else None
    if interval:
        watchdog = asyncio.create_task(_watchdog(interval, engine))
    code = 0
    waiter = asyncio.ensure_future(stop.wait())
    both: set[asyncio.Future[Any]] = {loaded, waiter}
    done, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
    if loaded in done:
        state, message = loaded.result()
        if state == "failed":
            log.error("%s", message)
            systemd.notify(f"STATUS=model failed to load: {message[:200]}")
            code = EX_CONFIG
        else:
            log.info("ready: model %s, bus %s", config.get("llm", "model"), hub.path)
            systemd.notify(f"READY=1\nSTATUS=ready: {config.get('llm', 'model')}")
            await waiter
    systemd.notify("STOPPING=1")
    log.info("stopping: cancelling unfinished answers")
    await asyncio.to_thread(engine.shutdown)
    await asyncio.sleep(0)  # let the cancelled answers' final events reach the clients
    if watchdog:
        watchdog.cancel()
    if http_api is not None:
        await http_api.close()
    await hub.close()
    waiter.cancel()
    return code


async def _start_http(config: Config, engine: Engine, asks: Any, tap: BusTap) -> Optional[Any]:
    """Start the HTTP API (``[http] enabled``); None after logging why it cannot run."""
    try:
        from edgebot.http.server import HttpApi, config_problem
    except ImportError as exc:
        log.error("[http] enabled needs aiohttp: pip install 'edgebot[http]' (%s)", exc)
        return None
    problem = config_problem(config)
    if problem:
        log.error("configuration error: %s", problem)
        return None
    api = HttpApi(config, engine, asks, tap)
    try:
        await api.start()
    except OSError as exc:
        log.error("cannot serve HTTP on %s:%s: %s; under systemd, `sudo deploy/install.sh BOARD --http` writes the "
                  "drop-in that lets edgebot.service listen (docs/install.md)", config.get("http", "host"),
                  config.get("http", "port"), exc)
        return None
    return api


def _read_fifo(path: str) -> None:
    with open(path, "rb") as fh:
        fh.readline()


def refuse_waiting_clients(why: str) -> int:
    """Under socket activation, answer every connection already waiting on the bus socket with
    ``error {code: not-ready}`` saying why edgebotd cannot start, then close it; returns how many.

    Called when edgebotd exits before serving (a configuration error): a connection left in the
    listening socket's queue would make systemd start edgebotd again at once, and the repeated
    failures would hit the start limit and take the socket down. The waiting client (a bridge, or
    the edgebot-cli that triggered the start) learns the reason instead of waiting 5 s for hello.
    """
    try:
        socks = systemd.listen_sockets()
    except OSError:
        return 0
    line = codec.encode(m.Error("not-ready", f"edgebotd cannot start: {why}"))
    refused = 0
    for listener in socks:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, OSError):
                break
            with conn:
                conn.setblocking(False)
                try:
                    conn.recv(65536)  # the client's hello, so closing does not reset the connection
                except OSError:
                    pass
                try:
                    conn.send(line)
                    refused += 1
                except OSError:
                    pass
        listener.close()  # our copy of the descriptor; systemd keeps its own and goes on listening
    return refused


async def _watchdog(interval: float, engine: Engine) -> None:
    """Ping systemd from the event loop while the engine thread is alive: if the loop stalls or the
    engine dies, the pings stop and systemd restarts edgebotd. ``interval`` in seconds."""
    while True:
        if engine.alive():
            systemd.notify("WATCHDOG=1")
        elif engine.stalled_s():
            log.error("engine stalled: the running answer has produced nothing for %.0f s; withholding the watchdog "
                      "ping so systemd restarts edgebotd", engine.stalled_s())
        else:
            log.error("engine is %s; withholding the watchdog ping so systemd restarts edgebotd", engine.state)
        await asyncio.sleep(interval)


DAEMON_EPILOG = """\
examples:
  edgebotd --model /var/lib/edgebot/models/DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf
  edgebotd --socket /tmp/edgebot.sock --log-level DEBUG     a foreground daemon for testing

environment:
  EDGEBOT_CONFIG            the config file (default /etc/edgebot/edgebot.toml)
  EDGEBOT_SOCKET            the bus socket (default: the config's [bus] socket)
  EDGEBOT_<SECTION>_<KEY>   any config key, e.g. EDGEBOT_LLM_N_THREADS=4 (docs/configuration.md)

exit codes:
  0 stopped by SIGTERM/SIGINT, 78 configuration or model error (systemd does not restart it),
  1 an unexpected error (a bug)
"""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgebotd", description="edgebot daemon: the model and the local bus.",
                                epilog=DAEMON_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="config file (default: $EDGEBOT_CONFIG or /etc/edgebot/edgebot.toml)")
    p.add_argument("--board", help="board profile: rpi4, rpi5, rk3588, generic-x86 (default: detect)")
    p.add_argument("--model", help="GGUF model file ([llm] model)")
    p.add_argument("--socket", help="bus socket path ([bus] socket)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR ([log] level)")
    p.add_argument("--version", action="version", version=f"edgebotd {edgebot.__version__}")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, board=args.board,
                             overrides={"llm.model": args.model, "bus.socket": args.socket,
                                        "log.level": args.log_level})
    except ConfigError as exc:
        systemd.setup_logging("INFO")
        log.error("configuration error: %s", exc)
        systemd.notify(f"STATUS=configuration error: {str(exc)[:200]}")
        refused = refuse_waiting_clients(f"configuration error: {exc}; fix it, then `sudo systemctl restart edgebot`")
        if refused:
            log.error("told %d waiting client(s) why edgebotd cannot start", refused)
        return EX_CONFIG
    systemd.setup_logging(config.get("log", "level"))
    log.info("edgebotd %s starting (board %s), open-files limit %d", edgebot.__version__, config.board or "none",
             raise_fd_limit())
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
