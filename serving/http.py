"""HTTP plumbing of the ingress: access control, upload limits, metrics and error bodies.

:class:`GuardMiddleware` is a plain ASGI middleware in front of the FastAPI app:

* **token**: when a token is configured, every path but ``/healthz`` needs
  ``Authorization: Bearer <token>``, else 401 (compared in constant time);
* **upload size**: a ``Content-Length`` above the limit is answered 413 before the body is
  read; a body without one (chunked) is counted while it is read and cut off at the limit
  with 413;
* **metrics**: every answer is counted by route and status (:mod:`serving.metrics`).

Error bodies are JSON: ``{"error": kind, "problem": "...", "file": name?, "valid": [...]?}``.
"""

from __future__ import annotations

import hmac
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from mastering.errors import (
    AudioReadError,
    AudioWriteError,
    InvalidAudioError,
    InvalidParameterError,
    LacquerError,
    UnsupportedAudioError,
)
from serving.metrics import metrics

#: Paths reachable without a token (liveness, and the studio page and its assets: no data).
OPEN_PATHS = frozenset({"/healthz", "/", "/studio/studio.css", "/studio/studio.js"})
#: Request body media types taken as a raw audio upload.
RAW_AUDIO_TYPES = ("audio/", "application/octet-stream")
#: Bytes copied per chunk when spooling uploads.
COPY_CHUNK = 1 << 20

Scope = dict[str, Any]
ASGIApp = Callable[..., Awaitable[None]]


class UploadTooLarge(Exception):
    """The request body exceeds the configured maximum (bytes)."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"upload exceeds the maximum of {limit} bytes ({limit / 1e6:g} MB)")


class UnsupportedMediaType(Exception):
    """The request's Content-Type is not an audio upload this endpoint takes."""


def error_body(kind: str, problem: str, **extra: Any) -> dict[str, Any]:
    return {"error": kind, "problem": problem, **{k: v for k, v in extra.items() if v is not None}}


def error_response(status: int, kind: str, problem: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse(error_body(kind, problem, **extra), status_code=status, headers=headers)


def valid_values(problem: str) -> list[str] | None:
    """The valid names a mastering error lists (``"...; valid: a, b, c"``), if any."""
    _, sep, tail = problem.partition("; valid: ")
    return [v.strip() for v in tail.split(",")] if sep else None


def lacquer_error_response(exc: LacquerError, filename: str | None = None) -> JSONResponse:
    """A :class:`LacquerError` as its 4xx answer (5xx only for a failed encode).

    415 unsupported audio (or not audio at all), 422 corrupt/truncated/NaN audio and invalid
    parameters. The temporary path a message may name is replaced by the upload's name."""
    name = filename if exc.path is not None else None
    if isinstance(exc, UnsupportedAudioError) or (
        isinstance(exc, AudioReadError) and exc.problem.startswith("not readable as audio")
    ):
        return error_response(415, "unsupported_audio", exc.problem, file=name)
    if isinstance(exc, AudioReadError | InvalidAudioError):
        return error_response(422, "invalid_audio", exc.problem, file=name)
    if isinstance(exc, InvalidParameterError):
        return error_response(
            422, "invalid_parameter", exc.problem, valid=valid_values(exc.problem)
        )
    if isinstance(exc, AudioWriteError):
        return error_response(500, "encode_failed", exc.problem)
    return error_response(422, "invalid_request", exc.problem, file=name)


class GuardMiddleware:
    """Token check, upload limit and request metrics around ``app`` (see the module doc).

    Args:
        token: bearer token required on every path but ``/healthz``; ``None``: no check.
        max_upload_bytes: largest request body taken.
    """

    def __init__(self, app: ASGIApp, token: str | None, max_upload_bytes: int):
        self.app = app
        self.token = token
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            early = self._reject_early(scope)
            if early is not None:
                await early(scope, receive, send_and_record)
                return
            await self.app(scope, self._limited(receive), send_and_record)
        except UploadTooLarge as exc:
            if not status["started"]:
                response = error_response(413, "upload_too_large", str(exc))
                await response(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            metrics().request(endpoint, status["code"], time.perf_counter() - t0)

    def _reject_early(self, scope: Scope) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is not None and scope.get("path") not in OPEN_PATHS:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token.encode()
            ):
                return error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return error_response(400, "bad_request", f"invalid Content-Length {length!r}")
            if declared > self.max_upload_bytes:
                return error_response(
                    413, "upload_too_large", str(UploadTooLarge(self.max_upload_bytes))
                )
        return None

    def _limited(self, receive):
        seen = 0
        limit = self.max_upload_bytes

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise UploadTooLarge(limit)
            return message

        return limited_receive


class Upload:
    """An uploaded audio file spooled to a private temporary folder, and the form fields that
    came with it. Use as a context manager: the folder is removed on exit, also when the
    client disconnected mid-upload.

    Attributes:
        path: the spooled file. filename: the client's name for it (for error messages).
        fields: multipart form fields other than the file (text values).
    """

    def __init__(self, upload_dir: str | None = None):
        self._dir = tempfile.TemporaryDirectory(prefix="lacquer-upload-", dir=upload_dir)
        self.path = Path(self._dir.name) / "upload"
        self.filename = "upload"
        self.fields: dict[str, str] = {}

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc) -> None:
        self._dir.cleanup()

    async def receive(self, request: Request) -> Upload:
        """Spool ``request``'s body: raw audio (``audio/*``, ``application/octet-stream`` or
        no Content-Type) or ``multipart/form-data`` with a ``file`` part.

        Raises:
            UnsupportedMediaType: another Content-Type, or a form without ``file``.
            InvalidParameterError: an empty body.
        """
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            await self._receive_form(request)
        elif not ctype or ctype.startswith(RAW_AUDIO_TYPES):
            with open(self.path, "wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
        else:
            raise UnsupportedMediaType(
                f"Content-Type {ctype!r} is not taken: send the audio file as the raw body "
                "(audio/* or application/octet-stream) or as the 'file' field of "
                "multipart/form-data"
            )
        if not self.path.exists() or self.path.stat().st_size == 0:
            raise InvalidParameterError("empty upload: no audio data in the request body")
        return self

    async def _receive_form(self, request: Request) -> None:
        form = await request.form()
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise UnsupportedMediaType(
                    "multipart/form-data upload without a 'file' part holding the audio"
                )
            self.filename = os.path.basename(upload.filename or "upload") or "upload"
            with open(self.path, "wb") as f:
                while chunk := await upload.read(COPY_CHUNK):
                    f.write(chunk)
            self.fields = {k: v for k, v in form.items() if isinstance(v, str)}
        finally:
            await form.close()
