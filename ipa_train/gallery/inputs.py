"""What the gallery's requests may carry, parsed and checked before any handler acts on them: JSON bodies (marks,
hand-score options) and the listing's query. Every refusal says what was wrong and what to send instead."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from aiohttp import web

from ..data.layout import STATUSES, DatasetError, validate_sample_id


def error_response(status: int, message: str) -> web.Response:
    """The gallery's error answer: ``{"error": message}``, the message saying what was wrong and what to do."""
    return web.json_response({"error": message}, status=status)


JSON_BODY_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError)


async def json_body(request: web.Request, usage: str) -> tuple[Any, Optional[web.Response]]:
    """The request's JSON body, or a 400/415 answer: bodies must be ``application/json`` (a cross-site form or
    ``text/plain`` POST then needs a CORS preflight, which is never granted), and bad JSON of any depth is a 400,
    never a 500 (deeply nested arrays make the parser raise RecursionError)."""
    if request.content_type != "application/json":
        return None, error_response(415, f"send the body as Content-Type: application/json; {usage}")
    try:
        return await request.json(), None
    except JSON_BODY_ERRORS as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        return None, error_response(400, f"the body must be JSON ({reason}); {usage}")


async def parsed_body(request: web.Request, usage: str, parse, optional: bool = False) -> tuple[Any, Optional[web.Response]]:
    """``parse`` applied to the request's JSON body (:func:`json_body`), or the answer that refuses it: a
    ``ValueError`` from ``parse`` is a 400 with its message. ``optional``: no body at all is parsed as ``None``."""
    body: Any = None
    if not optional or request.can_read_body:
        body, refused = await json_body(request, usage)
        if refused is not None:
            return None, refused
    try:
        return parse(body), None
    except ValueError as exc:
        return None, error_response(400, str(exc))


SORTS = ("date", "updated", "seed", "hand_score")
MAX_LIMIT = 500
DEFAULT_LIMIT = 60


@dataclass(frozen=True)
class ListingQuery:
    """One page of a dataset's samples, as asked for: ``statuses`` is ``None`` for all."""

    offset: int
    limit: int
    status: str
    statuses: Optional[frozenset[str]]
    sort: str
    order: str


def parse_listing_query(query: Mapping[str, str]) -> ListingQuery:
    """``offset``, ``limit``, ``status`` (``all`` or statuses, comma-separated), ``sort`` and ``order`` of a listing;
    ``ValueError`` says which one is wrong and what it may be."""
    try:
        offset = int(query.get("offset", "0"))
        limit = int(query.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        raise ValueError("offset and limit must be whole numbers") from None
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"offset must be >= 0 and limit between 1 and {MAX_LIMIT}")
    status = query.get("status", "all")
    statuses = None if status == "all" else frozenset(status.split(","))
    unknown = sorted(statuses - set(STATUSES)) if statuses is not None else []
    if unknown:
        raise ValueError(f"unknown status {unknown}; use 'all' or any of {list(STATUSES)}, comma-separated")
    sort = query.get("sort", "date")
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; use one of {list(SORTS)}")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ValueError("order must be 'asc' or 'desc'")
    return ListingQuery(offset, limit, status, statuses, sort, order)


MAX_MARKS = 10_000
MARKS_USAGE = 'send {"ids": [...], "status": "preferred"} or {"marks": [{"id": ..., "status": ...}]}'


def parse_marks(body: Any) -> dict[str, str]:
    """``{"ids": [...], "status": s}`` or ``{"marks": [{"id": i, "status": s}, ...]}`` -> {id: status}."""
    usage = MARKS_USAGE
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object; {usage}")
    pairs: list[tuple[Any, Any]]
    if "marks" in body:
        marks = body["marks"]
        if not isinstance(marks, list) or not all(isinstance(m, dict) for m in marks):
            raise ValueError(f"'marks' must be a list of objects; {usage}")
        pairs = [(mark.get("id"), mark.get("status")) for mark in marks]
    elif "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list):
            raise ValueError(f"'ids' must be a list of sample ids; {usage}")
        pairs = [(sample_id, body.get("status")) for sample_id in ids]
    else:
        raise ValueError(f"nothing to mark; {usage}")
    if not pairs:
        raise ValueError("no samples given to mark")
    if len(pairs) > MAX_MARKS:
        raise ValueError(f"at most {MAX_MARKS} samples per request, got {len(pairs)}")
    statuses: dict[str, str] = {}
    for sample_id, status in pairs:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; use one of {list(STATUSES)}")
        try:
            validate_sample_id(sample_id)
        except DatasetError as exc:
            raise ValueError(str(exc)) from None
        if statuses.get(sample_id, status) != status:
            raise ValueError(f"sample {sample_id} is given two different statuses")
        statuses[sample_id] = status
    return statuses


HAND_SCORE_OPTIONS = ("rescore", "gpu", "cancel")
HAND_SCORE_USAGE = (
    'send no body to score the unscored samples, {"rescore": true} to score all again, '
    '{"gpu": true} to run DWPose on the GPU, {"cancel": true} to stop a running job'
)


def parse_hand_score_options(body: Any) -> dict[str, bool]:
    """No body (``None``), ``{}`` or ``{"rescore": bool, "gpu": bool, "cancel": bool}``."""
    usage = HAND_SCORE_USAGE
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object; {usage}")
    unknown = sorted(set(body) - set(HAND_SCORE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown fields {unknown}; {usage}")
    options = {key: body.get(key, False) for key in HAND_SCORE_OPTIONS}
    if not all(isinstance(value, bool) for value in options.values()):
        raise ValueError(f"rescore, gpu and cancel must be true or false; {usage}")
    return options
