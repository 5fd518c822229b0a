"""The `ganscale serve` web app: one page, three JSON endpoints, one generator loaded once.

    GET  /                 the page (plain HTML + a little JS, nothing fetched from elsewhere)
    GET  /api/info         vocabularies, image size, backend, the run's facts (step, eval...)
    POST /api/generate     {"conditions": {ATTR: VALUE or "any", ...}, "n": 16, "seed": 3 | null,
                            "truncation": 0.7 | null} -> a PNG grid (data URL) + one tag text per face
    POST /api/interpolate  {"start": {"conditions", "seed"}, "end": {...}, "frames": 8,
                            "truncation"} -> a strip PNG and a GIF (data URLs)

``truncation`` is psi in (0, 1], as in ``ganscale sample --truncation``: z' = psi * z, pulling
faces toward the average one; null or 1 = none. z and the conditions left to "any" are drawn by
ganscale.outputs.latents, as for `ganscale sample`: seed k here is seed k there.

Safety: requests carry only attribute values, counts, seeds and a truncation value, checked by
strict pydantic models (unknown fields refused), then against the model's own vocabulary; no
request names a file or runs code. Errors are ``{"error": "<one line>"}`` with 400 (not JSON),
413 (too large) or 422 (a bad value). Bodies over 16 KiB are refused before parsing. The
Host header must name this server (a DNS-rebinding page cannot drive it). Generation runs in
FastAPI's thread pool; the engine's lock serialises forwards (see ganscale.outputs.engines).
"""

from __future__ import annotations

import base64
import math
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ganscale.errors import GanscaleError
from ganscale.outputs.engines import Engine, gif_bytes, grid, png_bytes
from ganscale.outputs.latents import MAX_PSI, MIN_PSI, draw_labels, draw_z, walk
from ganscale.serve.page import PAGE

MAX_N = 64
MAX_FRAMES = 32
MAX_BODY = 16 * 1024
MAX_SEED = 2**32 - 1

Conditions = dict[str, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateRequest(_Strict):
    conditions: Conditions = Field(default_factory=dict, max_length=16)
    n: int = Field(16, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    truncation: float | None = Field(None, gt=MIN_PSI, le=MAX_PSI)
    """psi: z' = psi * z (null = 1 = no truncation)."""


class End(_Strict):
    conditions: Conditions = Field(default_factory=dict, max_length=16)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


class InterpolateRequest(_Strict):
    start: End
    end: End
    frames: int = Field(8, ge=2, le=MAX_FRAMES)
    truncation: float | None = Field(None, gt=MIN_PSI, le=MAX_PSI)


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    """The first pydantic error as one line a person can act on."""
    err = (exc.errors() or [{}])[0]
    if err.get("type") == "json_invalid":
        return 400, "the request body is not valid JSON"
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    if not loc:
        return 422, 'the request body must be a JSON object, e.g. {"n": 16}'
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "extra_forbidden":
        return 422, f"{loc}: unknown field"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {repr(got)[:40]})"
    return 422, f"{loc}: {msg}{shown}"


class _BodyLimit:
    """Refuse bodies over ``MAX_BODY`` from Content-Length, and cut streamed ones at the limit."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            response = _error(413, f"request body over {MAX_BODY} bytes")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def allowed_hosts(host: str) -> list[str]:
    if host in ("0.0.0.0", "::", ""):
        return ["*"]  # told to listen everywhere: any name may reach it
    return sorted({host, "127.0.0.1", "localhost"})


def create_app(engine: Engine, facts: dict[str, Any], host: str = "127.0.0.1") -> FastAPI:
    """The app around one loaded engine (no docs/OpenAPI routes: they would load CDN assets)."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI(title="ganscale", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host))
    app.add_middleware(_BodyLimit)
    meta, attributes = engine.meta, engine.attributes
    size = int(meta["image_size"])

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(*_validation_message(exc))

    @app.exception_handler(GanscaleError)
    async def _refused(request: Request, exc: GanscaleError) -> JSONResponse:
        return _error(422, str(exc))

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "attributes": attributes,
            "conditional": bool(attributes),
            "image_size": size,
            "z_dim": meta["z_dim"],
            "backend": engine.backend,
            "max_n": MAX_N,
            "max_frames": MAX_FRAMES,
            "truncation": {
                "min": MIN_PSI,
                "max": MAX_PSI,
                "min_exclusive": True,
                "meaning": "psi: z' = psi * z",
            },
            "facts": facts,
        }

    def labels(conditions: Conditions, n: int, seed: int) -> tuple[Any, list[str]]:
        if not attributes:
            if conditions:
                raise GanscaleError("this model is unconditional: it takes only a seed and a count")
            return None, [""] * n
        return draw_labels(conditions, attributes, n, seed)

    @app.post("/api/generate")
    def generate(req: GenerateRequest) -> dict[str, Any]:
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        lab, tags = labels(req.conditions, req.n, seed)
        images = engine.images(draw_z(req.n, meta, seed, psi=req.truncation), lab)
        ncol = int(math.ceil(math.sqrt(req.n)))
        g = grid(images, ncol=ncol)
        return {
            "image": _data_url(png_bytes(g), "image/png"),
            "width": g.shape[1],
            "height": g.shape[0],
            "n": req.n,
            "ncol": ncol,
            "seed": seed,
            "truncation": req.truncation,
            "tags": tags,
        }

    @app.post("/api/interpolate")
    def interpolate(req: InterpolateRequest) -> dict[str, Any]:
        seed_a = req.start.seed if req.start.seed is not None else secrets.randbelow(2**31)
        seed_b = req.end.seed if req.end.seed is not None else seed_a  # same face, other colours
        lab_a, tags_a = labels(req.start.conditions, 1, seed_a)
        lab_b, tags_b = labels(req.end.conditions, 1, seed_b)
        import numpy as np

        f = req.frames
        z, t = walk(seed_a, seed_b, f, meta, psi=req.truncation)
        if attributes:
            frames = engine.images(z, np.repeat(lab_a, f, 0), np.repeat(lab_b, f, 0), t)
        else:
            frames = engine.images(z)
        strip = grid(frames, ncol=f)
        return {
            "image": _data_url(png_bytes(strip), "image/png"),
            "gif": _data_url(gif_bytes(frames), "image/gif"),
            "width": strip.shape[1],
            "height": strip.shape[0],
            "frames": f,
            "start": {"seed": seed_a, "tags": tags_a[0]},
            "end": {"seed": seed_b, "tags": tags_b[0]},
        }

    return app
