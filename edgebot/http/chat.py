"""OpenAI chat-completions JSON: validating a request into what an engine job needs, and shaping
answers, stream chunks and errors the way OpenAI clients (the ``openai`` package, Open WebUI)
expect. Pure functions, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from edgebot.engine.prompt import Turn
from edgebot.engine.schema_limits import SchemaLimitError, check_schema
from edgebot.http.errors import ApiError, bad  # here too: the HTTP modules import them from chat

UNSUPPORTED = ("functions", "function_call", "logprobs", "top_logprobs", "audio")
MAX_STOPS = 4


@dataclass
class ChatRequest:
    """A validated request. ``None`` fields take the daemon's defaults."""

    history: list[Turn]
    question: str
    model: str = ""
    stream: bool = False
    include_usage: bool = False
    max_tokens: Optional[int] = None  # tokens, thinking included
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    json_schema: Optional[str] = None  # JSON text of the schema the answer must match
    prompt_chars: int = 0
    tools: Optional[Any] = None  # edgebot.http.tools.ToolPlan when this answer may (or must) be a call
    no_think: bool = False  # answer a tool result directly, without thinking

    def overrides(self) -> dict[str, Any]:
        """The SamplingParams fields this request sets."""
        out: dict[str, Any] = {k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p),
                                                  ("seed", self.seed)) if v is not None}
        if self.json_schema is not None:
            out["json_schema"] = self.json_schema
        return out


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> Optional[float]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise bad(f"{name} must be a number from {lo:g} to {hi:g}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad(f"{name} must be an integer from {lo} to {hi}", name)
    return value


def _text(content: Any, index: int) -> str:
    """A message's content as text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad(f"only text content is supported (got a {kind!r} part)", param)
            parts.append(part["text"])
        return "\n".join(parts)
    raise bad("content must be a string or a list of text parts", param)


def strip_thinking(text: str) -> str:
    """``text`` without its ``<think>…</think>`` blocks (and the whitespace after each), as the R1
    template drops them from past answers. Linear: each search starts where the last one ended,
    and a ``<think>`` with no ``</think>`` after it ends the search (a regex took 3.75 s for
    ``<think>`` x 9,300, rescanning the rest of the text from every ``<think>``)."""
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("<think>", pos)
        if start < 0:
            break
        end = text.find("</think>", start + len("<think>"))
        if end < 0:
            break
        out.append(text[pos:start])
        pos = end + len("</think>")
        while pos < len(text) and text[pos].isspace():
            pos += 1
    out.append(text[pos:])
    return "".join(out)


def _conversation(messages: Any, max_messages: int) -> tuple[list[Turn], str, int, bool]:
    """OpenAI messages -> (earlier turns, the question, characters in all contents, whether the
    question is a tool's result).

    System and developer messages go at the start of the first user turn (R1 models take no
    system prompt); consecutive user messages are joined; thinking in past assistant messages is
    dropped, as the model's own template does. A past ``tool_calls`` answer is the call as the
    model wrote it; ``role: tool`` results become the next user turn (edgebot/http/tools.py).
    """
    from edgebot.http import tools as fc

    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    if len(messages) > max_messages:
        raise bad(f"messages holds {len(messages)} messages; this server accepts at most {max_messages} "
                  f"([http] max_messages): send fewer past turns", "messages", "context_length_exceeded")
    system: list[str] = []
    turns: list[Turn] = []
    user: list[str] = []
    chars = 0
    names: dict[str, str] = {}  # call id -> function name, from the last tool_calls
    after_result = False
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise bad(f"messages[{i}] must be an object", f"messages[{i}]")
        role = msg.get("role")
        text = _text(msg.get("content"), i)
        chars += len(text)
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            user.append(text)
            after_result = False
        elif role == "assistant":
            answer = strip_thinking(text).strip()
            if msg.get("tool_calls"):
                calls, names = fc.past_calls(msg, i)
                answer = calls if not answer else answer + "\n" + calls
            turns.append(Turn("\n\n".join(user), answer))
            user = []
        elif role == "tool":
            if not names:
                raise bad(f"messages[{i}]: a tool result must follow an assistant message with tool_calls",
                          f"messages[{i}].role")
            user.append(fc.result_text(msg, text, names))
            after_result = True
        else:
            raise bad(f"messages[{i}].role must be system, user, assistant or tool", f"messages[{i}].role")
    question = "\n\n".join(user)
    if not question.strip():
        raise bad("the last message must be a non-empty user message", "messages")
    if system:
        prefix = "\n\n".join(s for s in system if s.strip())
        if prefix and turns:
            turns[0] = Turn(prefix + "\n\n" + turns[0].user, turns[0].answer)
        elif prefix:
            question = prefix + "\n\n" + question
    return turns, question, chars, after_result


def _response_format(value: Any) -> Optional[str]:
    """``response_format`` -> JSON text of the schema the answer must match, or None."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise bad("response_format.type must be text, json_object or json_schema", "response_format")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return json.dumps({"type": "object"})
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise bad("response_format.json_schema must be an object with a schema object", "response_format")
    schema = spec.get("schema", {})
    try:
        check_schema(schema)  # the bounds, before anything is built (the grammar itself: HttpApi, off the loop)
    except SchemaLimitError as exc:
        raise bad(f"response_format.json_schema.schema asks too much: {exc}", "response_format",
                  "schema_too_complex") from None
    return json.dumps(schema)


def parse_chat(body: Any, max_prompt_chars: int, n_ctx: int, max_messages: int = 256) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body; raises ApiError (400) naming the bad parameter."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    for name in UNSUPPORTED:
        if body.get(name):
            raise bad(f"{name} is not supported by edgebot", name)
    model = body.get("model", "")
    if not isinstance(model, str):
        raise bad("model must be a string", "model")
    turns, question, chars, after_result = _conversation(body.get("messages"), max_messages)
    if chars > max_prompt_chars:
        raise bad(f"the messages hold {chars} characters; this server accepts at most {max_prompt_chars}",
                  "messages", "context_length_exceeded")
    if body.get("n", 1) != 1:
        raise bad("n must be 1", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise bad(f"stop must be a string or a list of at most {MAX_STOPS} strings", "stop")
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    max_tokens = _integer(body, "max_completion_tokens", 1, n_ctx)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, n_ctx)
    json_schema = _response_format(body.get("response_format"))
    from edgebot.http.tools import parse_tools

    plan = parse_tools(body.get("tools"), body.get("tool_choice"))
    no_think = False
    if plan is not None and plan.applies(after_result):
        if json_schema is not None:
            raise bad("response_format and tools cannot be combined: the answer is either a call or JSON",
                      "response_format")
        question, json_schema = plan.offer(question), plan.schema_json()
    elif plan is not None and after_result and plan.choice == "auto":
        no_think = True  # the tool's result is answered in plain text, like an action's result
    return ChatRequest(history=turns, question=question, model=model, stream=stream,
                       include_usage=bool(options.get("include_usage")), max_tokens=max_tokens,
                       temperature=_number(body, "temperature", 0.0, 2.0), top_p=_number(body, "top_p", 0.0, 1.0),
                       seed=None if seed is None else seed % 2**31, stop=tuple(s for s in stops if s),
                       json_schema=json_schema, prompt_chars=chars,
                       tools=plan if plan is not None and plan.applies(after_result) else None, no_think=no_think)


# -- answers -----------------------------------------------------------------------------------------

FINISH = {"stop": "stop", "length": "length"}


def usage(stats: dict[str, Any]) -> dict[str, Any]:
    """OpenAI ``usage`` from the engine's stats (tokens)."""
    prompt, completion = int(stats.get("prompt_tokens") or 0), int(stats.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(stats.get("cached_tokens") or 0)},
            "completion_tokens_details": {"reasoning_tokens": int(stats.get("think_tokens") or 0)}}


def completion(cid: str, created: int, model: str, content: str, reasoning: str, finish: str,
               stats: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming ``chat.completion``; ``reasoning_content`` only when there was thinking."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage(stats)}


def chunk(cid: str, created: int, model: str, delta: Optional[dict[str, Any]], finish: Optional[str] = None,
          stats: Optional[dict[str, Any]] = None) -> bytes:
    """One server-sent event of a ``chat.completion.chunk`` (``delta`` None: the usage-only chunk)."""
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [] if delta is None else
                            [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if stats is not None:
        body["usage"] = usage(stats)
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def sse_error(err: ApiError) -> bytes:
    return b"data: " + json.dumps(err.body()).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
