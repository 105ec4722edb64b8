"""The synthetic file as a file object, for the benchmarks' plain boto3 baselines
(`upload_fileobj` reads a file, the origin yields chunks): bench/staging.py's and
bench/capacity.py's."""

from collections.abc import Iterator


class ChunkStream:
    """A read-only, non-seekable file over an iterator of chunks. `read(n)` returns n bytes
    until the end (s3transfer takes a short read for a part)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = bytearray()
        self.done = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or len(self.pending) < size):
            chunk = next(self.chunks, None)
            if chunk is None:
                self.done = True
            else:
                self.pending += chunk
        if size < 0 or size >= len(self.pending):
            data = bytes(self.pending)
            self.pending.clear()
        else:
            with memoryview(self.pending) as view:
                data = bytes(view[:size])
            del self.pending[:size]
        return data
