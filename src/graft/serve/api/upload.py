"""Reading the uploaded image: multipart field `file` (a browser form) or the raw body (curl --data-binary).

Read by hand rather than as a FastAPI `File()` parameter so that both ways work on one route and the upload is
read inside the route's timeout, admission and batching ticket (see `predict`); `UPLOAD_DOC` documents it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from graft.serve.limits import Problem
from graft.serve.settings import RANGES

FILE_FIELD = "file"

UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary"},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": int(RANGES["top_k"].high)},
                    },
                    "required": [FILE_FIELD],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def read_upload(request: Request) -> tuple[bytes, int | None]:
    """The uploaded image's bytes, from multipart field `file` or the raw body; and a form's top_k.

    Any other content type is taken as the image itself (curl's --data-binary says form-urlencoded), and
    decoding decides whether it is one. Nothing is written to disk: the body is held in memory (BodyLimit
    bounds it) and a multipart body is parsed from it in memory.
    """
    body = await request.body()  # BodyLimit stops it at --max-upload-mb (413)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    top_k = None
    if content_type == "multipart/form-data":
        form = await _parse_multipart(request, body)
        upload = form.get(FILE_FIELD)
        if not isinstance(upload, UploadFile):
            fields = ", ".join(sorted(form.keys())) or "none"
            detail = f"send the image as a file in the multipart field '{FILE_FIELD}' (got: {fields})"
            raise Problem(422, "missing_file", detail)
        raw_k = form.get("top_k")
        if isinstance(raw_k, str) and raw_k:
            top_k = parse_top_k(raw_k)
        body = await upload.read()
    if not body:
        detail = f"empty upload: send an image as the body or as the multipart field '{FILE_FIELD}'"
        raise Problem(400, "empty_upload", detail)
    return body, top_k


def parse_top_k(raw: str) -> int:
    """A form's top_k: ASCII digits only (int() also takes '²'-like digits and 5000-digit numbers), in range."""
    top = RANGES["top_k"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9 and top.low <= int(raw) <= top.high):
        shown = raw if len(raw) <= 20 else raw[:20] + "…"
        raise Problem(422, "invalid_request", f"top_k must be a whole number from 1 to {top.high:g}, got {shown!r}")
    return int(raw)


LABEL_FIELD = "label"
GROUP_FIELD = "group"


async def read_labelled_uploads(request: Request, max_files: int) -> tuple[str, str | None, list[bytes]]:
    """A samples request: the class name (multipart field `label`), an optional `group` (a burst or video id) and
    the image files (field `file`, repeated).

    Multipart only (there is no raw-body form: the label must travel with the images); at most `max_files` files
    (413 too_many_files), held in memory within --max-upload-mb like predict's. The client's file names are never
    used. The label is returned as sent; `graft.data.class_names` judges it.
    """
    body = await request.body()  # BodyLimit stops it at --max-upload-mb (413)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        detail = f"send multipart/form-data with the class name as '{LABEL_FIELD}' and images as '{FILE_FIELD}'"
        raise Problem(415, "not_multipart", detail)
    form = await _parse_multipart(request, body, max_files=max_files)
    label = form.getlist(LABEL_FIELD)
    if len(label) != 1 or not isinstance(label[0], str):
        detail = f"send the class name once, as the text field '{LABEL_FIELD}'"
        raise Problem(422, "missing_label", detail)
    group = form.getlist(GROUP_FIELD)
    if len(group) > 1 or not all(isinstance(g, str) for g in group):
        raise Problem(422, "invalid_group", f"send at most one '{GROUP_FIELD}', as a text field")
    uploads = form.getlist(FILE_FIELD)
    unknown = sorted(set(form.keys()) - {LABEL_FIELD, GROUP_FIELD, FILE_FIELD})
    if unknown or not uploads or not all(isinstance(item, UploadFile) for item in uploads):
        got = ", ".join(sorted(form.keys())) or "none"
        detail = f"send one or more images as files in the multipart field '{FILE_FIELD}' (got fields: {got})"
        raise Problem(422, "missing_file", detail)
    files = [await item.read() for item in uploads]  # type: ignore[union-attr]
    for n, data in enumerate(files, 1):
        if not data:
            raise Problem(400, "empty_upload", f"file {n} is empty: nothing was saved")
    return label[0], (str(group[0]) if group else None), files


async def _parse_multipart(request: Request, body: bytes, max_files: int = 1) -> FormData:
    """Starlette's multipart parser over the body already in memory, with its file spool sized above the body.

    `request.form()` spools a file part over 1 MB to a temporary file on disk; a spool larger than the whole
    body never rolls over, so the upload stays in memory.
    """

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, chunks(), max_files=max_files, max_fields=8, max_part_size=4096)
    parser.spool_max_size = len(body) + 1
    try:
        return await parser.parse()
    except MultiPartException as error:
        if error.message.startswith("Too many files"):
            detail = f"at most {max_files} file(s) per request (--samples-max-files for samples)"
            raise Problem(413, "too_many_files", detail) from None
        raise Problem(400, "bad_request", f"malformed multipart body: {error.message}") from None
