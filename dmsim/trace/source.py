"""Open a trace: a path or `-` (stdin); gzip, zstd and xz found by magic bytes."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import sys

from .errors import TraceError

MAGIC_GZIP = b"\x1f\x8b"
MAGIC_ZSTD = b"\x28\xb5\x2f\xfd"
MAGIC_XZ = b"\xfd7zXZ\x00"


def read_bytes(path: str) -> bytes:
    """The raw bytes of a trace (stdin for `-`)."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TraceError(path, 0, f"cannot read: {e.strerror or e}") from None


def decompress(path: str, data: bytes) -> bytes:
    try:
        if data.startswith(MAGIC_GZIP):
            return gzip.decompress(data)
        if data.startswith(MAGIC_XZ):
            return lzma.decompress(data)
        if data.startswith(MAGIC_ZSTD):
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        raise TraceError(path, 0, f"corrupt compressed data: {e}") from None
    except Exception as e:  # zstandard.ZstdError
        raise TraceError(path, 0, f"corrupt compressed data: {e}") from None
    return data


def read_data(path: str) -> tuple[bytes, str]:
    """(decompressed bytes, sha256 of the bytes as given)."""
    raw = read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    data = decompress(path, raw)
    if b"\x00" in data[:4096]:
        raise TraceError(path, 0, "binary data, not a text trace (trace.dat? use `trace-cmd report`)")
    return data, digest


def read_text(path: str) -> tuple[str, str]:
    """(text, sha256 of the bytes as given): decompressed and decoded."""
    data, digest = read_data(path)
    return data.decode("utf-8", errors="replace"), digest
