"""Multipart uploads streamed straight into the artifact store's staging folder.

Starlette's form parser spools every file part into the system temp folder before a handler
runs, so a chunked body costs disk outside the data folder up to the body cap, and a hash of
it costs a second full read. Here the file part is written where it will be published from,
hashed and counted as its bytes arrive, and refused with 413 the moment it passes ``limit``.
Other fields are kept in memory, few and small.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.problems import Problem

MAX_FIELDS = 16  # extra form fields are ignored, as a form parser would
MAX_FIELD_BYTES = 64 << 10


@dataclass
class Upload:
    """What a multipart body held: the file part (written to ``path``) and the other fields."""

    path: Path
    filename: str | None = None  # None: the body had no file part
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)


class _Reader:
    """The parser's callbacks: route each part's bytes to the file or to a small field."""

    def __init__(self, file_field: str, target: Path, limit: int) -> None:
        self.file_field, self.limit = file_field, limit
        self.upload = Upload(target)
        self.digest = hashlib.sha256()
        self.out: IO[bytes] | None = None
        self.headers: dict[bytes, bytes] = {}
        self.header_field = b""
        self.name: str | None = None
        self.value = bytearray()
        self.parts = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.headers[self.header_field.lower()] = (
            self.headers.get(self.header_field.lower(), b"") + data[start:end]
        )

    def on_header_end(self) -> None:
        self.header_field = b""

    def on_headers_finished(self) -> None:
        self.parts += 1
        if self.parts > MAX_FIELDS + 1:
            raise Problem("validation-error", f"the form has more than {MAX_FIELDS + 1} parts.")
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if self.name == self.file_field and filename is not None:
            if self.out is not None or self.upload.filename is not None:
                raise Problem("validation-error", f"send one '{self.file_field}' file part, not several.")
            self.upload.filename = Path(filename.decode("utf-8", "replace")).name or "upload"
            self.out = self.upload.path.open("wb")
            self.name = None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.out is not None:
            self.upload.size += len(chunk)
            if self.upload.size > self.limit:
                raise Problem("payload-too-large", f"the upload exceeds the {self.limit:,}-byte limit.")
            self.digest.update(chunk)
            self.out.write(chunk)
        elif self.name is not None and len(self.upload.fields) < MAX_FIELDS:
            self.value += chunk
            if len(self.value) > MAX_FIELD_BYTES:
                raise Problem(
                    "validation-error", f"form field {self.name!r} is over {MAX_FIELD_BYTES:,} bytes."
                )

    def on_part_end(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        elif self.name is not None and len(self.upload.fields) < MAX_FIELDS:
            self.upload.fields.setdefault(self.name, self.value.decode("utf-8", "replace"))
        self.headers, self.name, self.value = {}, None, bytearray()

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


async def receive_multipart(request: Request, file_field: str, target: Path, limit: int) -> Upload:
    """Stream ``request``'s multipart body: part ``file_field`` into ``target`` (at most
    ``limit`` bytes, hashed on the way), the other fields into ``Upload.fields``."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise Problem("unsupported-media-type", "send the upload as multipart/form-data.")
    reader = _Reader(file_field, target, limit)
    callbacks = {name: getattr(reader, name) for name in dir(_Reader) if name.startswith("on_")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ValueError as exc:  # the parser's own complaint about a malformed body
        raise Problem("bad-request", f"the multipart body cannot be parsed ({exc}).") from exc
    except ClientDisconnect as exc:  # nobody is left to answer; nothing is kept
        raise Problem("bad-request", "the client closed the connection before the body ended.") from exc
    finally:
        reader.close()
    reader.upload.sha256 = reader.digest.hexdigest()
    return reader.upload
