"""HTTP ``Range`` requests on a file of known size (RFC 9110 section 14).

Pure logic, no I/O. One range is served as 206; anything this module does not
serve as a range (another unit, several ranges, bad syntax) is ignored, as the
RFC allows, and the whole file is sent as 200. A range that starts at or beyond
the end of the file is unsatisfiable (416).

>>> parse_range("bytes=0-99", 1000)
ByteRange(start=0, end=99)
>>> parse_range("bytes=900-", 1000)
ByteRange(start=900, end=999)
>>> parse_range("bytes=-100", 1000)
ByteRange(start=900, end=999)
>>> parse_range("bytes=0-1,5-9", 1000) is None
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ByteRange", "RangeNotSatisfiableError", "parse_range"]

_SPEC = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII | re.IGNORECASE)
_MAX_DIGITS = 19  # beyond any file size: refuse to parse absurd numbers


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive, as in ``Content-Range``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class RangeNotSatisfiableError(ValueError):
    """The range starts beyond the file: answer 416 with ``Content-Range: bytes */size``."""

    def __init__(self, header: str, size: int) -> None:
        super().__init__(
            f"Range {header.strip()[:80]!r} does not overlap the file's {size} bytes; request "
            f"bytes=N- with N below {size}, or drop the Range header for the whole file"
        )
        self.size = size


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range ``header`` asks of a ``size``-byte file, or None for the whole file.

    Raises :class:`RangeNotSatisfiableError` for a well-formed range that
    selects no byte of the file.
    """
    if header is None:
        return None
    m = _SPEC.fullmatch(header)
    if m is None:
        return None  # another unit, several ranges, or garbage: serve it all
    first, last = m[1], m[2]
    if not (first or last) or len(first) > _MAX_DIGITS or len(last) > _MAX_DIGITS:
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiableError(header, size)
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid, so ignored (RFC 9110 14.1.1)
    if start >= size:
        raise RangeNotSatisfiableError(header, size)
    return ByteRange(start, min(int(last), size - 1) if last else size - 1)
