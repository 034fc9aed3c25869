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
            return _zstd_frames(path, data)
    except TraceError:
        raise
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        raise TraceError(path, 0, f"corrupt compressed data: {e}") from None
    except Exception as e:  # zstandard.ZstdError
        raise TraceError(path, 0, f"corrupt compressed data: {e}") from None
    return data


def _zstd_frames(path: str, data: bytes) -> bytes:
    """Every frame of a zstd file, in order (`zstd` and `cat a.zst b.zst` write several;
    one decompressobj() stops at the end of the first), and an error for a cut-off one."""
    import zstandard

    out = []
    dctx = zstandard.ZstdDecompressor()
    while data:
        obj = dctx.decompressobj()
        out.append(obj.decompress(data))
        if not obj.eof:
            raise TraceError(path, 0, "corrupt compressed data: a zstd frame is cut off")
        data = obj.unused_data
    return b"".join(out)


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
