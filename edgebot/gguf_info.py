"""Read a GGUF file's header, metadata and tensor table without llama.cpp or numpy.

``edgebot-cli model verify`` and ``edgebot-cli doctor`` use this to say *why* a model would not
load before edgebotd ever tries: wrong magic, truncated download, no architecture, no context
length, no chat template. Only the header is parsed (a few MB for a 150k-token vocabulary);
tensor data is never read, but its extent is checked against the file size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Optional

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types (gguf spec).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
T_STRING, T_ARRAY = 8, 9

# ggml tensor types: (elements per block, bytes per block). Same table as gguf-py's GGML_QUANT_SIZES.
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17),
}
GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K",
                   11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 20: "IQ4_NL", 23: "IQ4_XS",
                   30: "BF16", 39: "MXFP4"}

MAX_STRING = 64 << 20  # bytes: a longer metadata string means a corrupt header
MAX_COUNT = 1 << 32


class GGUFError(Exception):
    """The file is not a usable GGUF; the message says what is wrong."""


@dataclass
class GGUFInfo:
    """What the header says. Sizes in bytes."""

    path: str
    version: int
    file_size: int
    metadata: dict[str, Any]
    tensor_count: int
    data_end: Optional[int] = None  # where the last tensor's data ends; None if a tensor type is unknown
    tensor_types: dict[str, int] = field(default_factory=dict)  # type name -> tensor count

    @property
    def architecture(self) -> Optional[str]:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    def arch_value(self, name: str) -> Any:
        """``<architecture>.<name>``, e.g. ``arch_value("context_length")``."""
        return self.metadata.get(f"{self.architecture}.{name}") if self.architecture else None

    @property
    def context_length(self) -> Optional[int]:
        value = self.arch_value("context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def chat_template(self) -> Optional[str]:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def kv_bytes_per_token(self) -> Optional[int]:
        """F16 K and V cache bytes per context token (llama.cpp's default cache type)."""
        layers, heads = self.arch_value("block_count"), self.arch_value("attention.head_count")
        kv_heads = self.arch_value("attention.head_count_kv") or heads
        embd = self.arch_value("embedding_length")
        if not all(isinstance(v, int) and v > 0 for v in (layers, heads, kv_heads, embd)):
            return None
        head_dim = embd // heads
        return 2 * layers * kv_heads * head_dim * 2

    def problems(self, require_template: bool = True) -> list[str]:
        """Everything that would stop edgebotd from using this model (empty = fine)."""
        found = []
        if not self.architecture:
            found.append("no general.architecture in the metadata")
        elif self.context_length is None:
            found.append(f"no {self.architecture}.context_length in the metadata")
        if require_template and not self.chat_template:
            found.append("no tokenizer.chat_template: edgebotd cannot format a conversation for this model")
        if "tokenizer.ggml.tokens" not in self.metadata:
            found.append("no tokenizer.ggml.tokens: the vocabulary is missing")
        if self.data_end is not None and self.data_end > self.file_size:
            found.append(f"truncated: the tensors end at byte {self.data_end} but the file has {self.file_size} "
                         f"bytes ({self.data_end - self.file_size} missing); download it again")
        return found


class _Reader:
    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.size = fh, size

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise GGUFError(f"truncated header: wanted {n} bytes at offset {self.fh.tell() - len(data)}, "
                            f"the file has {self.size}")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self, keep: bool = True) -> str:
        n = self.unpack("<Q")
        if n > MAX_STRING:
            raise GGUFError(f"corrupt header: a {n}-byte string at offset {self.fh.tell() - 8}")
        if not keep:
            self.fh.seek(n, 1)
            return ""
        return self.read(n).decode("utf-8", "replace")

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == T_STRING:
            return self.string(keep)
        if vtype == T_ARRAY:
            itype, count = self.unpack("<I"), self.unpack("<Q")
            if count > MAX_COUNT:
                raise GGUFError(f"corrupt header: an array of {count} items")
            if itype in _SCALARS and itype != 7:
                width = struct.calcsize(_SCALARS[itype])
                raw = self.read(width * count)
                return list(struct.unpack(f"<{count}{_SCALARS[itype][1]}", raw)) if keep else count
            items = [self.value(itype, keep) for _ in range(count)]
            return items if keep else count
        raise GGUFError(f"corrupt header: unknown metadata type {vtype} at offset {self.fh.tell() - 4}")


def read_gguf(path: str | Path, *, keep_arrays: bool = False) -> GGUFInfo:
    """Parse the header of ``path``. Arrays (the vocabulary) are counted, not kept, unless asked."""
    p = Path(path)
    try:
        size = p.stat().st_size
        fh = p.open("rb", buffering=1 << 20)
    except FileNotFoundError:
        raise GGUFError(f"{p}: no such file") from None
    except PermissionError:
        raise GGUFError(f"{p}: permission denied") from None
    except IsADirectoryError:
        raise GGUFError(f"{p}: is a directory") from None
    with fh:
        r = _Reader(fh, size)
        magic = fh.read(4)
        if not magic:
            raise GGUFError(f"{p}: is empty (0 bytes)")
        if magic != MAGIC:
            raise GGUFError(f"{p}: not a GGUF file (starts with {magic!r}, expected {MAGIC!r})")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(f"{p}: GGUF version {version} is not supported (2 or 3)")
        tensor_count, kv_count = r.unpack("<Q"), r.unpack("<Q")
        if tensor_count > MAX_COUNT or kv_count > MAX_COUNT:
            raise GGUFError(f"{p}: corrupt header ({tensor_count} tensors, {kv_count} keys)")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = r.string()
            vtype = r.unpack("<I")
            metadata[key] = r.value(vtype, keep=keep_arrays or vtype != T_ARRAY)
        if fh.tell() > size:
            raise GGUFError(f"{p}: truncated header ({size} bytes)")
        extents: list[int] = []
        types: dict[str, int] = {}
        known = True
        for _ in range(tensor_count):
            r.string()
            n_dims = r.unpack("<I")
            if n_dims > 8:
                raise GGUFError(f"{p}: corrupt tensor table ({n_dims} dimensions)")
            elements = 1
            for _ in range(n_dims):
                elements *= r.unpack("<Q")
            ttype, offset = r.unpack("<I"), r.unpack("<Q")
            types[GGML_TYPE_NAMES.get(ttype, str(ttype))] = types.get(GGML_TYPE_NAMES.get(ttype, str(ttype)), 0) + 1
            if ttype in GGML_TYPE_SIZES:
                block, nbytes = GGML_TYPE_SIZES[ttype]
                extents.append(offset + elements // block * nbytes)
            else:
                known = False
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            alignment = DEFAULT_ALIGNMENT
        header_end = fh.tell()
    data_start = (header_end + alignment - 1) // alignment * alignment
    data_end = data_start + max(extents, default=0) if known else None
    return GGUFInfo(str(p), version, size, metadata, tensor_count, data_end, types)
