"""moto's S3 server for loopback tests and benchmarks, with ranged GETs that read only the range.

moto 5 answers `GET` with `Range: bytes=a-b` by reading the whole object and slicing it, so a Parquet
reader's many ranged requests on one large lake file (polars/object_store, s3fs) cost the object's size
each: at 1M users a single `interactions` read took minutes. Here a single-range GET reads just those
bytes from the object's buffer; headers and status are what moto sends for the same request (206 with
Content-Range), and every other request is moto's own. Run as `python -m recsys_platform.dev.loopback_s3
-H 127.0.0.1 -p PORT` (the arguments of `moto.server`); `production_stack.start_moto_server` does.
"""

from __future__ import annotations

import threading
from typing import Any

_wanted = threading.local()


def _byte_range(spec: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single-range `bytes=` header within `size`; None to leave it to moto."""
    if not spec or "," in spec or not spec.startswith("bytes="):
        return None
    first, _, last = spec[len("bytes=") :].partition("-")
    try:
        if first:
            begin, end = int(first), min(int(last), size - 1) if last else size - 1
        elif last:
            begin, end = max(size - int(last), 0), size - 1
        else:
            return None
    except ValueError:
        return None
    return (begin, end) if 0 <= begin <= end < size else None


def install() -> None:
    """Patch moto's S3 GetObject and object value so a single-range GET reads only its bytes."""
    from moto.s3.models import FakeKey
    from moto.s3.responses import S3Response

    whole_value = FakeKey.value
    get_object = S3Response.get_object

    def value(self: FakeKey) -> bytes:
        span = getattr(_wanted, "span", None)
        if span is None:
            return whole_value.fget(self)
        with self.lock:
            self._value_buffer.seek(span[0])
            return self._value_buffer.read(span[1] - span[0] + 1)

    def ranged_get_object(self: S3Response) -> Any:
        if self._get_int_param("partNumber"):
            return get_object(self)
        key, _ = self._get_key()
        span = _byte_range(self.headers.get("range"), key.size)
        if span is None:
            return get_object(self)
        _wanted.span = span
        try:
            status, headers, body = get_object(self)
        finally:
            _wanted.span = None
        if status != 200:
            return status, headers, body
        for name in [h for h in headers if h.startswith("x-amz-checksum-")]:
            del headers[name]  # S3 sends no checksum with a partial body
        headers["content-range"] = f"bytes {span[0]}-{span[1]}/{key.size}"
        headers["content-length"] = str(len(body))
        return 206, headers, body

    FakeKey.value = property(value, whole_value.fset)
    S3Response.get_object = ranged_get_object


def main() -> None:
    """Start moto's server (same arguments as `python -m moto.server`) with ranged reads patched in."""
    install()
    from moto.server import main as moto_main

    moto_main()


if __name__ == "__main__":
    main()
