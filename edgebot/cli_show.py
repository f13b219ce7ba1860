"""How edgebot-cli shows a ``status-report`` and the declared actions (from their JSON data)."""

from __future__ import annotations

import json
from typing import Any


def print_status(report: dict[str, Any]) -> None:
    """``edgebot-cli status`` for a person: state, model, queue, clients, speed, memory, sessions."""
    q = report.get("queue") or {}
    state = report.get("state")
    progress = report.get("load_progress")
    if state == "loading" and isinstance(progress, (int, float)):
        state = f"loading ({progress:.0f} %)"
    lines = [f"edgebotd {report.get('server_version')}: {state}",
             f"model:    {report.get('model')}",
             f"queue:    {q.get('waiting', 0)} waiting (max {q.get('max')}), running: {q.get('running') or 'nothing'}",
             f"clients:  {report.get('clients', 0)}",
             f"speed:    {report.get('last_tokens_per_s') or '-'} tokens/s (last answer)",
             f"memory:   {(report.get('memory') or {}).get('rss_mb')} MiB resident"]
    kv = report.get("kv") or {}
    if kv:
        saved = (f", {kv.get('saved_sessions')} saved to RAM ({(kv.get('saved_bytes') or 0) / 2**20:.1f} MiB), "
                 f"{kv.get('restored')} put back" if kv.get("saved_sessions") or kv.get("restored") else "")
        lines.append(f"kv cache: {kv.get('used')}/{kv.get('cells')} tokens ({kv.get('layout')}), "
                     f"{len(kv.get('sequences') or [])} sequences in use, {kv.get('evictions')} dropped{saved}")
    if isinstance(report.get("temperature_c"), (int, float)):
        lines.append(f"temp:     {report['temperature_c']:.1f} °C")
    for s in report.get("sessions") or []:
        lines.append(f"session:  {s.get('name')}: {s.get('turns')} turns, idle {s.get('idle_s')} s")
    for bridge, dev in sorted((report.get("devices") or {}).items()):
        what = {"speech-in": "microphone", "speech-out": "speaker"}.get(bridge, bridge)
        message = f": {dev['message']}" if dev.get("message") else ""
        lines.append(f"{what + ':':9} {dev.get('state')} ({bridge}){message}")
    print("\n".join(lines))


def print_actions(actions: dict[str, Any]) -> None:
    """``edgebot-cli actions``: each declared action with its parameters, flags and phrases."""
    declared = actions.get("declared", [])
    if not declared:
        print("no actions declared ([[actions]] in the configuration)")
        return
    print(f"actions: {'on' if actions.get('enabled') else 'OFF ([robot] actions = false)'}"
          f"{'' if actions.get('model_actions', True) else ', phrases only (model_actions = false)'}")
    for a in declared:
        params = a.get("parameters", {}).get("properties", {})
        flags = [f"port {a.get('port')}"]
        if a.get("confirm"):
            flags.append("confirm")
        if a.get("rate_limit"):
            flags.append(f"at most {a['rate_limit']} per {a.get('rate_window_s', 0):g} s")
        print(f"{a['name']}({', '.join(params)}): {a.get('description', '')} [{', '.join(flags)}]")
        for name, spec in params.items():
            print(f"    {name}: {json.dumps(spec, ensure_ascii=False)}")
        for phrase in a.get("phrases", []):
            print(f"    says: {phrase!r}")
