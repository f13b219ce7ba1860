"""KV sequences of the llama.cpp backend: one unified KV cache shared by several llama.cpp sequences.

Each conversation (a session, or an anonymous one-off/HTTP prompt) lives in its own sequence, so
switching between conversations evaluates only the new question. The cache holds ``cells`` tokens
in all (``[engine] kv_tokens``); when a new prompt needs room, idle sequences are dropped, least
recently used first (anonymous ones before sessions), and re-read later if their conversation
comes back. Every sequence's tokens sit at positions ``0 … len - 1``: removing a span (old turns
that no longer fit, or the thinking of the last answer) shifts what follows down with
``llama_memory_seq_add``, as llama-server's context shift does, so nothing is re-read.

With ``[engine] saved_sessions_mib`` a session's sequence is saved to RAM
(``llama_state_seq_get_data``) when it is dropped or handed to another conversation, and put back
(``llama_state_seq_set_data``) when the session returns, instead of being read again; the least
recently saved go first when the budget is full.

With ``[engine] kv_per_sequence`` the cache is split evenly instead (llama.cpp's non-unified KV,
one stream per sequence, as ``llama-server --parallel``): each sequence has ``cells`` of its own,
so dropping another sequence never makes room, and a conversation is trimmed to fit its share.

Runs only on the engine thread.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections import OrderedDict
from typing import Any, Optional

log = logging.getLogger(__name__)


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Seq:
    """One llama.cpp sequence: ``tokens`` are what the KV cache holds for it, at positions 0…len-1."""

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.key: Optional[str] = None  # the session it holds; None = anonymous (or empty)
        self.tokens: list[int] = []
        self.last_used = 0.0  # time.monotonic() seconds
        self.busy = False  # a generation runs in it


class SeqPool:
    """The sequences of one llama.cpp context and the cells they use."""

    def __init__(self, ctx: Any, n_seq: int, cells: int, per_sequence: bool = False, save_bytes: int = 0) -> None:
        """``cells``: tokens the KV cache holds in all (shared), or each sequence's share (``per_sequence``);
        ``save_bytes``: RAM for sessions' saved sequences (0 = none are saved)."""
        import llama_cpp

        self._ll = llama_cpp
        self.ctx = ctx
        self.mem = llama_cpp.llama_get_memory(ctx.ctx)
        self.seqs = [Seq(i) for i in range(n_seq)]
        self.per_sequence = per_sequence
        self.cells = cells // n_seq if per_sequence else cells
        self.evictions = 0  # sequences dropped for room (status)
        self.save_bytes = save_bytes
        self.saved: OrderedDict[str, tuple[bytes, list[int]]] = OrderedDict()  # session -> (state, tokens)
        self.saved_bytes = 0  # RAM the saved sequences take (kept up to date: status reads it from another thread)
        self.restored = 0  # sessions put back from RAM instead of read again
        self.shifted = 0  # tokens removed from the middle of a sequence by shifting

    # -- bookkeeping ---------------------------------------------------------------------------

    def used(self) -> int:
        """Cells in use."""
        return sum(len(s.tokens) for s in self.seqs)

    def clear(self, seq: Seq) -> None:
        self._ll.llama_memory_seq_rm(self.mem, seq.id, -1, -1)
        seq.tokens, seq.key = [], None

    def forget(self, key: str) -> None:
        """A session ended: its sequence is free."""
        self._unsave(key)
        for seq in self.seqs:
            if seq.key == key and not seq.busy:
                self.clear(seq)

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"seq": s.id, "session": s.key, "tokens": len(s.tokens), "busy": s.busy}
                for s in self.seqs if s.tokens or s.busy]

    # -- choosing a sequence -------------------------------------------------------------------

    def acquire(self, key: Optional[str], tokens: list[int]) -> Seq:
        """The sequence to continue ``tokens`` in, marked busy: the session's own; else its saved one
        put back into an empty (or the least recently used) sequence; else the idle anonymous one
        sharing the longest prefix; else an empty one; else the least recently used."""
        idle = [s for s in self.seqs if not s.busy]
        if not idle:
            raise RuntimeError("every KV sequence is busy; lower [engine] parallel or raise [engine] sequences")
        seq = next((s for s in idle if key is not None and s.key == key), None)
        if seq is None and key is not None and key in self.saved:
            saved = self._unsave(key)  # first: saving the sequence it replaces may fill the budget
            assert saved is not None
            seq = self._vacate(idle, key)
            self.make_room(len(saved[1]), seq)  # a shared cache: room for it first
            self._restore(seq, key, saved)
        if seq is None:
            anonymous = [s for s in idle if s.key is None and s.tokens]
            best = max(anonymous, key=lambda s: common_prefix(s.tokens, tokens), default=None)
            if best is not None and common_prefix(best.tokens, tokens) > 1:
                seq = best
            else:
                seq = self._vacate(idle, key)
        seq.key, seq.busy, seq.last_used = key, True, time.monotonic()
        return seq

    def _vacate(self, idle: list[Seq], key: Optional[str]) -> Seq:
        """An empty idle sequence, else the least recently used one (anonymous first), cleared (and saved)."""
        empty = [s for s in idle if not s.tokens]
        seq = empty[0] if empty else min(idle, key=lambda s: (s.key is not None, s.last_used))
        if seq.tokens:
            log.debug("KV sequence %d (%s, %d tokens) reused for %s", seq.id, seq.key or "anonymous",
                      len(seq.tokens), key or "a one-off prompt")
            self._save(seq)
            self.clear(seq)
            self.evictions += 1
        return seq

    def release(self, seq: Seq) -> None:
        seq.busy, seq.last_used = False, time.monotonic()

    def evict_one(self, keep: Optional[Seq] = None) -> bool:
        """Drop the idle sequence to lose first (anonymous before sessions, then least recently used);
        False when none can go or, with a split cache, when that would free no room for others."""
        if self.per_sequence:
            return False
        victims = [s for s in self.seqs if not s.busy and s is not keep and s.tokens]
        if not victims:
            return False
        victim = min(victims, key=lambda s: (s.key is not None, s.last_used))
        saved = self._save(victim)
        log.info("KV cache full: dropped the sequence of %s (%d tokens); %s", victim.key or "an anonymous prompt",
                 len(victim.tokens), "saved to RAM" if saved else "it is re-read if it comes back")
        self.clear(victim)
        self.evictions += 1
        return True

    def make_room(self, need: int, keep: Optional[Seq] = None) -> bool:
        """Drop idle sequences until ``need`` more cells fit; False when even that is not enough."""
        if self.per_sequence:
            return keep is None or len(keep.tokens) + need <= self.cells
        while self.used() + need > self.cells and self.evict_one(keep):
            pass
        return self.used() + need <= self.cells

    # -- saving sessions to RAM ---------------------------------------------------------------

    def _unsave(self, key: str) -> Optional[tuple[bytes, list[int]]]:
        """Take ``key``'s saved sequence out of RAM (None if there is none)."""
        item = self.saved.pop(key, None)
        if item is not None:
            self.saved_bytes -= len(item[0])
        return item

    def _save(self, seq: Seq) -> bool:
        """Keep a session's sequence in RAM before it is cleared; False when not saved."""
        if not self.save_bytes or seq.key is None or not seq.tokens:
            return False
        size = int(self._ll.llama_state_seq_get_size(self.ctx.ctx, seq.id))
        if not size or size > self.save_bytes:
            return False
        buf = (ctypes.c_uint8 * size)()
        if self._ll.llama_state_seq_get_data(self.ctx.ctx, buf, size, seq.id) != size:
            return False
        self._unsave(seq.key)
        self.saved[seq.key] = (bytes(buf), list(seq.tokens))
        self.saved_bytes += size
        while self.saved_bytes > self.save_bytes:
            gone = next(iter(self.saved))
            self._unsave(gone)
            log.debug("saved sequence of %s dropped from RAM (budget %d bytes)", gone, self.save_bytes)
        log.debug("KV sequence %d of %s saved to RAM (%d tokens, %d bytes)", seq.id, seq.key, len(seq.tokens), size)
        return True

    def _restore(self, seq: Seq, key: str, saved: tuple[bytes, list[int]]) -> bool:
        """Put ``key``'s ``saved`` sequence into the empty ``seq``; False (nothing restored) when it fails."""
        state, tokens = saved
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if not self._ll.llama_state_seq_set_data(self.ctx.ctx, buf, len(state), seq.id):
            self.clear(seq)  # no room for it: the conversation is read again
            log.info("the saved sequence of %s could not be put back (no room); it is re-read", key)
            return False
        seq.tokens = tokens
        self.restored += 1
        log.debug("KV sequence %d: %s put back from RAM (%d tokens)", seq.id, key, len(tokens))
        return True

    # -- editing a sequence --------------------------------------------------------------------

    def drop_span(self, seq: Seq, start: int, count: int) -> bool:
        """Remove ``count`` tokens at ``start`` and shift the rest down (context shift); False if refused."""
        if count <= 0 or start < 0 or start + count > len(seq.tokens):
            return False
        ll, end = self._ll, start + count
        if not ll.llama_memory_can_shift(self.mem) or not ll.llama_memory_seq_rm(self.mem, seq.id, start, end):
            return False
        ll.llama_memory_seq_add(self.mem, seq.id, end, -1, -count)
        del seq.tokens[start:end]
        self.shifted += count
        return True

    def truncate(self, seq: Seq, n: int) -> int:
        """Keep only the first ``n`` tokens; returns what is kept (0 when the cache refused)."""
        if n >= len(seq.tokens):
            return len(seq.tokens)
        if not self._ll.llama_memory_seq_rm(self.mem, seq.id, n, -1):
            self.clear(seq)
            return 0
        del seq.tokens[n:]
        return n

    def reuse(self, seq: Seq, tokens: list[int], dropped: Optional[tuple[int, int]], keep_one: bool = True) -> int:
        """Bring ``seq`` to the longest reusable prefix of ``tokens``; returns its length.

        ``dropped`` = ``(start, count)``: ``tokens`` are the conversation's previous prompt with that
        span removed (old turns trimmed); when the sequence still holds them they are shifted out
        instead of re-read. ``keep_one``: leave at least one token to evaluate (for fresh logits).
        """
        n = common_prefix(seq.tokens, tokens)
        if dropped is not None and n >= dropped[0]:
            start, count = dropped
            tail = seq.tokens[start + count:]
            if tail and common_prefix(tail, tokens[start:]) > 0 and self.drop_span(seq, start, count):
                log.debug("KV sequence %d: shifted out %d tokens at %d", seq.id, count, start)
                n = common_prefix(seq.tokens, tokens)
        if keep_one:
            n = min(n, len(tokens) - 1)
        return self.truncate(seq, n)
