"""The HTTP API (FastAPI, OpenAPI at ``/docs`` and ``/openapi.json``), built per ingress
replica around a :class:`Service` (the ingress deployment in :mod:`serving.app`).

Endpoints:

* ``POST /v1/master``: master an uploaded file (raw body + query parameters, or
  ``multipart/form-data`` with a ``file`` part and the parameters as fields). Answers the
  mastered file with a small JSON report in the ``X-Lacquer-Report`` header; with
  ``Accept: multipart/mixed`` a two-part answer (the full report as JSON, then the file);
  with ``stream=true`` the encoded file in chunked blocks. Every master is scored and, below
  the server's threshold, re-mastered with altered parameters (auto-retry, on by default with
  a small cap; ``retry=false``: one attempt; ``max_attempts``: the cap for this request); the
  reports list the attempts (number, score, sub-scores, kept) and the kept score.
* ``POST /v1/analyze``: loudness and features of an uploaded file.
* ``GET /v1/presets``: genres, style words, emotions, rule-breaks, adapters, formats,
  attempts (default and limit).
* ``GET /healthz``: liveness (no token needed).
* ``GET /``: the studio page (:mod:`serving.studio`).
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask

from mastering.errors import LacquerError
from serving.codec import byte_blocks
from serving.http import (
    GuardMiddleware,
    UnsupportedMediaType,
    Upload,
    error_response,
    lacquer_error_response,
)
from serving.studio import add_studio_routes

#: OpenAPI request body of the upload endpoints: raw audio or a form with a file.
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "additionalProperties": {"type": "string"},
                }
            },
        },
    }
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token"},
    413: {"description": "upload larger than the configured maximum"},
    415: {"description": "not an audio upload, or audio in an unsupported form"},
    422: {"description": "corrupt audio, or an invalid parameter (the valid values listed)"},
    429: {"description": "overloaded: retry after the Retry-After header's seconds"},
    503: {"description": "a stage is restarting: retry after the Retry-After header's seconds"},
}


class MasterParams(BaseModel):
    """What to master for. Unset fields are estimated from the audio."""

    model_config = ConfigDict(extra="forbid")

    genre: str | None = Field(None, description="a genre from GET /v1/presets")
    tempo: float | None = Field(None, description="tempo, BPM (20..400)")
    style: str | None = Field(None, description='style phrase, e.g. "aggressive rock"')
    emotion: str | None = Field(None, description="an emotion from GET /v1/presets")
    rule_breaks: str | None = Field(None, description="comma-separated rule-break names")
    target_lufs: float = Field(-14.0, description="loudness target, LUFS (-60..0)")
    ceiling_dbtp: float = Field(-1.0, description="true-peak ceiling, dBTP (-20..0)")
    format: str = Field("wav24", description="wav16, wav24, wav32f, flac16 or flac24")
    adapter: str | None = Field(
        None,
        description="style adapter / chain variant (default: the server's genre adapter for "
        "the song's genre when it has promoted ones, else the shipped chain)",
    )
    stream: bool = Field(False, description="stream the encoded master in chunked blocks")
    retry: bool = Field(
        True, description="score the master and re-master it while below the threshold"
    )
    max_attempts: int | None = Field(
        None, description="attempts in all, the first included (default: the server's policy)"
    )

    def rule_break_names(self) -> tuple[str, ...]:
        return tuple(r.strip() for r in (self.rule_breaks or "").split(",") if r.strip())


class Service(Protocol):
    """What the routes need from the ingress."""

    token: str | None
    max_upload_bytes: int
    upload_dir: str | None

    async def master(self, upload: Upload, params: MasterParams, series: bool = False) -> Any:
        """The encoded master and its reports (:class:`serving.request.Mastered`)."""

    async def analyze(self, upload: Upload) -> dict[str, Any]: ...

    def presets(self) -> dict[str, Any]: ...


def build_api(service: Service) -> FastAPI:
    app = FastAPI(
        title="Lacquer",
        version="1",
        description="Neural mastering: upload a mix, get a master.",
    )
    app.add_middleware(
        GuardMiddleware, token=service.token, max_upload_bytes=service.max_upload_bytes
    )

    @app.exception_handler(LacquerError)
    async def _lacquer_error(request: Request, exc: LacquerError) -> JSONResponse:
        return lacquer_error_response(exc, getattr(request.state, "filename", None))

    @app.exception_handler(UnsupportedMediaType)
    async def _media_type(request: Request, exc: UnsupportedMediaType) -> JSONResponse:
        return error_response(415, "unsupported_media_type", str(exc))

    add_studio_routes(app)  # the studio page at /

    @app.get("/healthz", summary="liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/presets", summary="genres, styles, emotions, rule-breaks, adapters")
    async def presets() -> dict[str, Any]:
        return service.presets()

    @app.post(
        "/v1/analyze",
        summary="loudness and features of an uploaded file",
        openapi_extra=UPLOAD_BODY,
        responses=ERROR_RESPONSES,
    )
    async def analyze(request: Request) -> dict[str, Any]:
        with Upload(service.upload_dir) as upload:
            await upload.receive(request)
            request.state.filename = upload.filename
            return await service.analyze(upload)

    @app.post(
        "/v1/master",
        summary="master an uploaded file",
        openapi_extra=UPLOAD_BODY,
        responses={200: {"content": {"audio/wav": {}, "audio/flac": {}}}, **ERROR_RESPONSES},
        response_class=Response,
    )
    async def master(request: Request, query: Annotated[MasterParams, Query()]) -> Response:
        upload = Upload(service.upload_dir)
        try:
            await upload.receive(request)
            request.state.filename = upload.filename
            params = _merge_fields(query, upload.fields)
            # The studio's plot series cost host time: only for callers of the full report.
            full = "multipart/mixed" in request.headers.get("accept", "")
            result = await service.master(upload, params, series=full)
        except BaseException:
            upload.__exit__()
            raise
        return _master_response(request, params, result, upload)

    return app


def _merge_fields(query: MasterParams, fields: dict[str, str]) -> MasterParams:
    """Form fields override the query string."""
    if not fields:
        return query
    try:
        return MasterParams.model_validate({**query.model_dump(exclude_unset=True), **fields})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise _InvalidForm(problems) from None


class _InvalidForm(LacquerError):
    pass


def _master_response(
    request: Request, params: MasterParams, result: Any, upload: Upload
) -> Response:
    """The answer to ``POST /v1/master`` from a :class:`serving.request.Mastered`."""
    headers = {"X-Lacquer-Report": json.dumps(result.header, separators=(",", ":"))}
    cleanup = BackgroundTask(upload.__exit__)
    if params.stream:
        return StreamingResponse(
            byte_blocks(result.data),
            media_type=result.media_type,
            headers=headers,
            background=cleanup,
        )
    if "multipart/mixed" in request.headers.get("accept", ""):
        boundary = uuid.uuid4().hex
        report = json.dumps(result.report).encode()
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json\r\n"
                'Content-Disposition: inline; name="report"\r\n\r\n'.encode(),
                report,
                f"\r\n--{boundary}\r\nContent-Type: {result.media_type}\r\n"
                f'Content-Disposition: attachment; name="master"; '
                f'filename="{result.filename}"\r\n\r\n'.encode(),
                result.data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        return Response(
            body,
            media_type=f"multipart/mixed; boundary={boundary}",
            headers=headers,
            background=cleanup,
        )
    return Response(result.data, media_type=result.media_type, headers=headers, background=cleanup)
