"""Open a trace: a path or `-` (stdin); gzip, zstd and xz found by magic bytes.

A trace is read as a stream of decompressed chunks (TraceStream): memory stays
bounded by the chunk size whatever the size of the file, and the sha256 of the
bytes as given is computed on the way.
"""

from __future__ import annotations

import hashlib
import lzma
import queue
import sys
import threading
import zlib
from collections.abc import Iterable, Iterator

from .errors import TraceError

MAGIC_GZIP = b"\x1f\x8b"
MAGIC_ZSTD = b"\x28\xb5\x2f\xfd"
MAGIC_XZ = b"\xfd7zXZ\x00"

RAW_CHUNK = 4 << 20  # bytes read from the file at a time
# decompressed bytes handed out at a time (at most; at least one piece of input's worth)
OUT_CHUNK = 4 << 20
SCAN_THREADS = 2  # chunks tokenised at once


def _open_raw(path: str):
    try:
        return sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as e:
        raise TraceError(path, 0, f"cannot read: {e.strerror or e}") from None


class TraceStream:
    """Iterate over the decompressed bytes of a trace, in chunks.

    `digest` (the sha256 of the bytes as given) is complete once the stream is
    exhausted. A cut or corrupt compressed file raises TraceError naming it."""

    def __init__(self, path: str):
        self.path = path
        self._sha = hashlib.sha256()
        self.compression = ""
        self.raw_bytes = 0

    @property
    def digest(self) -> str:
        return self._sha.hexdigest()

    def _raw(self) -> Iterator[bytes]:
        f = _open_raw(self.path)
        try:
            while True:
                try:
                    block = f.read(RAW_CHUNK)
                except OSError as e:
                    raise TraceError(self.path, 0, f"cannot read: {e.strerror or e}") from None
                if not block:
                    return
                self._sha.update(block)
                self.raw_bytes += len(block)
                yield block
        finally:
            if f is not sys.stdin.buffer:
                f.close()

    def __iter__(self) -> Iterator[bytes]:
        raw = self._raw()
        head = b""
        for block in raw:  # enough bytes to see the magic
            head += block
            if len(head) >= 8:
                break
        if head.startswith(MAGIC_GZIP):
            self.compression = "gzip"
            yield from self._inflate(head, raw, _GzipMember)
        elif head.startswith(MAGIC_XZ):
            self.compression = "xz"
            yield from self._inflate(head, raw, _XzStream)
        elif head.startswith(MAGIC_ZSTD):
            self.compression = "zstd"
            yield from self._inflate(head, raw, _ZstdFrame)
        else:
            if head:
                yield head
            yield from raw

    def _inflate(self, head: bytes, raw: Iterator[bytes], member) -> Iterator[bytes]:
        """Decompress every member (gzip), stream (xz) or frame (zstd) in turn:
        `gzip`, `xz` and `zstd` all write several for concatenated files."""
        dec = member(self.path)
        pending = head
        try:
            while True:
                if not pending and not dec.holds_output:
                    pending = next(raw, b"")
                    if not pending:
                        break
                out, pending = dec.feed(pending)
                if out:
                    yield out
                if dec.eof:
                    # the next member, after zero bytes (xz stream padding, a padded gzip)
                    pending = pending.lstrip(b"\x00")
                    while not pending:
                        pending = next(raw, b"")
                        if not pending:
                            break
                        pending = pending.lstrip(b"\x00")
                    if not pending:
                        dec = None
                        break
                    dec = member(self.path)
            if dec is not None and not dec.eof:
                raise self._corrupt(f"{member.WHAT} is cut off (truncated file)")
        except TraceError:
            raise
        except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as e:
            raise self._corrupt(str(e)) from None
        except Exception as e:  # zstandard.ZstdError
            raise self._corrupt(str(e)) from None

    def _corrupt(self, why: str) -> TraceError:
        return TraceError(self.path, 0, f"corrupt compressed data: {why}")


class _GzipMember:
    """One gzip member; output at most OUT_CHUNK bytes per feed (a zip bomb stays bounded)."""

    WHAT = "a gzip member"

    def __init__(self, path: str):
        self.d = zlib.decompressobj(wbits=31)

    holds_output = False  # what it has not output yet is in the input it gives back

    @property
    def eof(self) -> bool:
        return self.d.eof

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(output, input not yet consumed)."""
        out = self.d.decompress(data, OUT_CHUNK)
        if self.d.eof:
            return out, self.d.unused_data
        return out, self.d.unconsumed_tail


class _XzStream:
    WHAT = "an xz stream"
    def __init__(self, path: str):
        self.d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    @property
    def holds_output(self) -> bool:
        """Output is waiting from input already fed (feed(b"") gets it)."""
        return not self.d.needs_input and not self.d.eof

    @property
    def eof(self) -> bool:
        return self.d.eof

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        if self.d.needs_input:
            out = self.d.decompress(data, OUT_CHUNK)
            data = b""
        else:  # output left from the last feed: data is what was not consumed yet
            out = self.d.decompress(b"", OUT_CHUNK)
        if self.d.eof:
            return out, self.d.unused_data + data
        # LZMADecompressor keeps the input it has not consumed yet; with needs_input
        # False, the next feed() asks it for the rest of the output first
        return out, data


class _ZstdFrame:
    WHAT = "a zstd frame"
    SLICE = 1 << 16  # input fed at a time: zstd's output per input byte is large at most

    def __init__(self, path: str):
        import zstandard

        self.d = zstandard.ZstdDecompressor().decompressobj()

    holds_output = False

    @property
    def eof(self) -> bool:
        return self.d.eof

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        out = self.d.decompress(data[:self.SLICE])
        rest = data[self.SLICE:]
        if self.d.eof:
            return out, self.d.unused_data + rest
        return out, rest


MAX_LINE = 16 << 20  # a longer line is not text a trace holds


def line_chunks(chunks, path: str) -> Iterator[bytes]:
    """Cut a stream of chunks into chunks of whole lines: each ends after a newline
    (the last may not). A line may not be longer than MAX_LINE."""
    carry = b""
    nlines = 0
    for c in chunks:
        nl = c.rfind(b"\n")
        if nl < 0:
            carry += c
            if len(carry) > MAX_LINE:
                raise TraceError(path, nlines + 1, f"a line longer than {MAX_LINE >> 20} MiB: "
                                 "not a text trace", carry[:100].decode("utf-8", "replace"))
            continue
        # one copy (a slice of bytes is a copy, and so is a concatenation)
        piece = b"".join((carry, memoryview(c)[:nl + 1])) if nl + 1 < len(c) or carry else c
        nlines += piece.count(b"\n")
        yield piece
        carry = c[nl + 1:]
    if carry:
        yield carry


HEAD = 1 << 16  # what format detection looks at


def open_trace(path: str) -> tuple[str, Iterator[bytes], TraceStream]:
    """(the first HEAD bytes as text, chunks of whole lines, the stream): the chunks
    start at the beginning of the trace; the stream's digest is complete once they
    are read. Reading, hashing and decompressing run in a thread of their own, a
    few chunks ahead of the reader."""
    stream = TraceStream(path)
    it = prefetch(line_chunks(stream, path))
    first: list[bytes] = []
    size = 0
    for c in it:
        first.append(c)
        size += len(c)
        if size >= HEAD:
            break
    head = b"".join(first) if len(first) > 1 else (first[0] if first else b"")
    if b"\x00" in head[:4096]:
        raise TraceError(path, 0, "binary data, not a text trace (trace.dat? use `trace-cmd report`)")

    def chunks() -> Iterator[bytes]:
        while first:
            yield first.pop(0)
        yield from it

    return head[:HEAD].decode("utf-8", errors="replace"), chunks(), stream


_END = object()


def scanned(chunks: Iterable[bytes], scan, ahead: int = 2) -> Iterator[tuple[bytes, object]]:
    """(chunk, scan(chunk)) for each chunk, in order, with up to `ahead` chunks
    scanned at once in worker threads (the numba scanners release the GIL)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        pending: deque = deque()
        for c in chunks:
            pending.append((c, pool.submit(scan, c)))
            if len(pending) > ahead:
                c0, f = pending.popleft()
                yield c0, f.result()
        while pending:
            c0, f = pending.popleft()
            yield c0, f.result()


def prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """items, produced by a thread of their own up to `depth` ahead (the numba
    scanners and hashlib release the GIL: the two overlap). An exception in the
    thread is raised here, where the item would have come."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in items:
                if not put(x):
                    return
            put(_END)
        except BaseException as e:  # handed to the reader
            put(e)

    threading.Thread(target=run, daemon=True, name="dmsim-read").start()
    try:
        while True:
            x = q.get()
            if x is _END:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()


def read_data(path: str) -> tuple[bytes, str]:
    """(decompressed bytes, sha256 of the bytes as given): the whole trace in memory
    (tests and small files; the readers take a TraceStream)."""
    s = TraceStream(path)
    data = b"".join(s)
    if b"\x00" in data[:4096]:
        raise TraceError(path, 0, "binary data, not a text trace (trace.dat? use `trace-cmd report`)")
    return data, s.digest


def read_text(path: str) -> tuple[str, str]:
    """(text, sha256 of the bytes as given): decompressed and decoded."""
    data, digest = read_data(path)
    return data.decode("utf-8", errors="replace"), digest
