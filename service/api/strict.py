"""Strict request bodies: JSON types as declared, no string-to-number coercion.

Litestar converts bodies with msgspec's lax mode (`"5"` would pass as 5). This before_request
hook decodes the raw body strictly into the handler's own Struct first, so a wrong type is
refused with the same clarity as an unknown field. The decoded Struct is handed to Litestar as
the request's parsed JSON, so the body is decoded once: Litestar's lax conversion passes an
instance of the handler's own type through unchanged.
"""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

import msgspec
from litestar import Request
from litestar.utils.scope.state import ScopeState

from service.errors import InvalidJSON, InvalidRequest

_JSON_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "true": "true", "false": "false",
               "array": "an array", "object": "an object", "null": "null"}
_NUMBER_RULE = "must be a finite number within the field's limits (see the schema)"


def _body_type(request: Request) -> Any | None:
    """The msgspec Struct a handler takes as `data`, or None."""
    param = request.route_handler.parsed_fn_signature.parameters.get("data")
    if param is None:
        return None
    annotation = param.annotation
    if get_origin(annotation) is not None and not isinstance(annotation, type):
        annotation = get_args(annotation)[0] if get_args(annotation) else annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct) else None


def field_and_rule(exc: msgspec.ValidationError) -> tuple[str | None, str]:
    """(field path, rule) from msgspec's `Expected ... - at `$.top_p``."""
    text = str(exc)
    rule, sep, where = text.rpartition(" - at `")
    if not sep:
        rule, where = text, ""
    path = where.rstrip("`").removeprefix("$.data").removeprefix("$").lstrip(".") or None
    if path and path.startswith("[...]"):
        path = None
    if m := re.search(r"unknown field `([^`]+)`", rule):
        name = m.group(1)
        return (f"{path}.{name}" if path else name), f"unknown field `{name}` (check its spelling)"
    if m := re.search(r"missing required field `([^`]+)`", rule):
        if m.group(1) == "data":
            return None, "the request body must be a JSON object"
        name = m.group(1)
        return (f"{path}.{name}" if path else name), "this field is required"
    if path is None and rule.startswith("Expected `object`"):
        return None, "the request body must be a JSON object"
    if m := re.fullmatch(r"Expected `(\w+)( \| null)?`, got `(\w+)`", rule):
        want, got = _JSON_NAMES.get(m[1], m[1]), _JSON_NAMES.get(m[3], m[3])
        want += " or null" if m[2] else ""
        return path, f"must be {want}, got {got} (types are not converted)"
    if rule == "Number out of range":
        return path, _NUMBER_RULE
    return path, rule


def invalid_request(exc: msgspec.ValidationError) -> InvalidRequest:
    """The InvalidRequest a msgspec validation error means, naming the field and its rule."""
    field, rule = field_and_rule(exc)
    return InvalidRequest(f"{field}: {rule}" if field else rule, field=field)


async def strict_body(request: Request) -> None:
    """before_request hook: refuse a body whose JSON types differ from the handler's schema."""
    body_type = _body_type(request)
    if body_type is None:
        return None
    body = await request.body()
    try:
        data = msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        raise invalid_request(exc) from None
    except msgspec.DecodeError as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    # Request.json() reads this cache before decoding: the handler's `data` is this very Struct
    ScopeState.from_scope(request.scope).json = data
    return None
