"""The error answers of the serving API, documented in its OpenAPI schema (every route lists the ones it can give)."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse
from pydantic import BaseModel

logger = logging.getLogger(__name__)


class ErrorOut(BaseModel):
    """Why a request was not answered."""

    detail: str


_ERROR_MEANINGS = {
    400: "unknown query parameter, or a rollback without exactly one target",
    401: "missing or invalid API key (a key is configured for this route)",
    404: "the active model does not know the item",
    409: "the store is not in the state the operation names",
    413: "request body over the limit",
    429: "too many failed key attempts from this address, or over the intake rate; see Retry-After",
    503: "online store unavailable, nothing deployed, or (admin routes) no admin key configured",
}


def errors(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for the error statuses a route can answer (bodies: `ErrorOut`)."""
    return {code: {"model": ErrorOut, "description": _ERROR_MEANINGS[code]} for code in codes}


def public_reason(exc: Exception, store: object) -> str:
    """An error's text as clients may see it: the store file's directories left out (the log keeps them)."""
    text = str(exc)
    path = getattr(store, "path", None)
    return text.replace(str(path), path.name) if path is not None else text


def store_unavailable(route_path: str, store: object, exc: Exception) -> JSONResponse:
    """The 503 of a request the online store could not answer (logged with the full reason)."""
    logger.warning("online store unavailable on %s: %s", route_path, exc)
    return JSONResponse({"detail": f"online store unavailable: {public_reason(exc, store)}"}, status_code=503)
