"""Reading the uploaded image: multipart field `file` (a browser form) or the raw body (curl --data-binary).

Read by hand rather than as a FastAPI `File()` parameter so that both ways work on one route and the upload is
read inside the route's timeout, admission and batching ticket (see `predict`); `UPLOAD_DOC` documents it.
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from graft.serve.limits import Problem

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
                        "top_k": {"type": "integer", "minimum": 1},
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
    decoding decides whether it is one.
    """
    body = await request.body()  # BodyLimit stops it at --max-upload-mb (413)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    top_k = None
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get(FILE_FIELD)
        if not isinstance(upload, UploadFile):
            fields = ", ".join(sorted(form.keys())) or "none"
            detail = f"send the image as a file in the multipart field '{FILE_FIELD}' (got: {fields})"
            raise Problem(422, "missing_file", detail)
        raw_k = form.get("top_k")
        if isinstance(raw_k, str) and raw_k:
            if not raw_k.isdigit() or int(raw_k) < 1:
                raise Problem(422, "invalid_request", f"top_k must be a positive integer, got {raw_k!r}")
            top_k = int(raw_k)
        body = await upload.read()
    if not body:
        detail = f"empty upload: send an image as the body or as the multipart field '{FILE_FIELD}'"
        raise Problem(400, "empty_upload", detail)
    return body, top_k
