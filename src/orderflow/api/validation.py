"""Every error of a bad request at once. msgspec decodes a request and stops at its first
error, which keeps the valid request fast; only once it has failed is the raw JSON validated
again, against the JSON Schema msgspec generates from the same Struct (with jsonschema-rs),
and each field's own rule (a Struct's `field_checks`: blank names, say) applied to it, so the
422 names every offending field. Query parameters likewise: once a handler refused one, every
query parameter is checked against its route's `Param` schemas.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import jsonschema_rs
import msgspec

from orderflow.api.errors import HTTPProblem, invalid
from orderflow.api.schemas import FieldError, json_schema

Path = tuple[str | int, ...]


class ParamSchema(Protocol):
    """A route's parameter (a `routing.Param`), as far as its checks go (a Protocol: this module
    is below routing)."""

    @property
    def name(self) -> str: ...

    @property
    def where(self) -> str: ...

    @property
    def schema(self) -> dict[str, Any]: ...


def field_name(path: Iterable[str | int]) -> str:
    """``items[0].name`` for ("items", 0, "name"), as msgspec names a field; ``body`` for the
    body itself."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name or "body"


@functools.cache
def _validator(cls: type) -> Any:
    return jsonschema_rs.Draft202012Validator(json_schema(cls), validate_formats=True)


@functools.cache
def _type_info(cls: type) -> Any:
    return msgspec.inspect.type_info(cls)


#: The most offending fields a 422 names: a small body can hold thousands of errors (a list
#: of 30,000 bad ids), and listing them all would cost the event loop a second and the client
#: megabytes. Past it, a last entry says that more were left out.
MAX_ERRORS = 50


def every_body_error(problem: HTTPProblem, cls: type, body: bytes) -> HTTPProblem:
    """`problem` (msgspec refused `body` as a `cls`) naming every offending field (the first
    `MAX_ERRORS` of them)."""
    errors = problem.problem.errors
    if not errors:
        return problem
    try:
        return invalid(body_errors(cls, body, errors[0]))
    except UnicodeDecodeError:  # msgspec stopped at a field before it reached the bad bytes
        return HTTPProblem("bad-request", "the body is not UTF-8")


def body_errors(cls: type, body: bytes, first: FieldError) -> list[FieldError]:
    """Every offending field of `body` as a `cls` (msgspec found `first`), in the body's
    order; `first` among them; past `MAX_ERRORS`, a last entry saying more were left out.

    Raises:
        UnicodeDecodeError: the body is not UTF-8.
    """
    try:
        instance = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return [first]
    found: dict[str, str] = {}
    schema = json_schema(cls)
    more = False
    for error in _validator(cls).iter_errors(instance):
        if len(found) >= MAX_ERRORS:
            more = True
            break
        for path, message in _explained(error, schema, instance):
            found.setdefault(field_name(path), message)
    checked: dict[str, str] = {}
    seen: list[str] = []
    _check(_type_info(cls), instance, (), checked, seen)
    # A field's own rule says best what is wrong with it; the fields in the body's order.
    names = [name for name in seen if name in checked or name in found]
    ordered = {name: checked.get(name) or found[name] for name in [*names, *found]}
    ordered.setdefault(first.field, first.message)
    listed = [FieldError(name, _short(message)) for name, message in ordered.items()]
    if more or len(listed) > MAX_ERRORS:
        listed = [
            *listed[:MAX_ERRORS],
            FieldError("body", f"more errors not listed (the first {MAX_ERRORS} are)"),
        ]
    return listed


def _short(message: str) -> str:
    """A message as long as a person reads: the validator's quote the value it refused, and a
    value may be a list of 30,000 ids."""
    return message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 1] + "…"


_MESSAGE_CHARS = 200


def _explained(
    error: Any, schema: dict[str, Any], instance: Any, base: Path = ()
) -> list[tuple[Path, str]]:
    """(where, what is wrong) for one jsonschema-rs error, in the words of our own 422s."""
    path: Path = (*base, *error.instance_path)
    kind = error.kind
    name = type(kind).__name__
    if name == "AnyOf":  # an optional field (X | None): what is wrong with it as an X
        branches = [b for b in _at(schema, error.schema_path) if b != {"type": "null"}]
        if len(branches) == 1:
            value = _value_at(instance, error.instance_path)
            branch = {**branches[0], "$defs": schema.get("$defs", {})}
            validator = _query_validator(msgspec.json.encode(branch))
            explained = [
                found
                for inner in validator.iter_errors(value)
                for found in _explained(inner, branch, value, path)
            ]
            if explained:
                return explained
    if name == "Required":
        return [((*path, kind.property), "required")]
    if name == "AdditionalProperties":
        return [((*path, field), "not a field of this request") for field in kind.unexpected]
    if name == "Pattern":  # a pattern is no message: the field's description is
        described = _at(schema, error.schema_path[:-1]).get("description")
        return [(path, f"must be {described}" if described else "not in the expected form")]
    return [(path, error.message)]


def _at(schema: dict[str, Any], where: Sequence[str | int]) -> Any:
    node: Any = schema
    for part in where:
        ref = part == "$ref"  # the schema a $ref names
        node = schema["$defs"][node["$ref"].rpartition("/")[2]] if ref else node[part]
    return node


def _value_at(instance: Any, where: Sequence[str | int]) -> Any:
    for part in where:
        instance = instance[part]
    return instance


def _check(info: Any, value: Any, path: Path, checked: dict[str, str], seen: list[str]) -> None:
    """Apply each Struct's `field_checks` to the values of `value` the schema let through, and
    go down into nested Structs."""
    while isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            _check(member, value, path, checked, seen)
    elif isinstance(info, msgspec.inspect.StructType) and isinstance(value, dict):
        checks = getattr(info.cls, "field_checks", {})
        for field in info.fields:
            if field.encode_name not in value:
                continue
            where = (*path, field.encode_name)
            seen.append(field_name(where))
            item = value[field.encode_name]
            check = checks.get(field.name)
            if check is not None and isinstance(item, str):
                try:
                    check(item)
                except ValueError as exc:
                    checked[field_name(where)] = str(exc).partition(": ")[2] or str(exc)
            _check(field.type, item, where, checked, seen)
    elif isinstance(info, msgspec.inspect.ListType | msgspec.inspect.VarTupleType) and (
        isinstance(value, list)
    ):
        for index, item in enumerate(value):
            _check(info.item_type, item, (*path, index), checked, seen)


def every_query_error(
    problem: HTTPProblem, params: Sequence[ParamSchema], pairs: list[tuple[str, str]]
) -> HTTPProblem:
    """`problem` (a handler refused a query parameter) naming every bad query parameter of
    `pairs` (the query's)."""
    if not problem.problem.errors or not any(p.where == "query" for p in params):
        return problem
    first = problem.problem.errors[0]
    errors = query_errors(params, pairs)
    if first.field not in {e.field for e in errors}:
        errors.insert(0, first)
    if len(errors) == 1:
        return problem
    return invalid(errors, "bad-request")


def query_errors(params: Sequence[ParamSchema], pairs: list[tuple[str, str]]) -> list[FieldError]:
    """Every query parameter of `pairs` that `params` does not allow, is repeated when it may
    not be, or breaks its schema."""
    known = {p.name: p for p in params if p.where == "query"}
    values: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for key, value in pairs:
        if key not in known:
            errors.setdefault(key, "not a parameter here")
        else:
            values.setdefault(key, []).append(value)
    for key, given in values.items():
        schema = known[key].schema
        if schema.get("type") == "array":
            instance: Any = [_typed(schema["items"], value) for value in given]
        elif len(given) > 1:
            errors[key] = "given more than once"
            continue
        else:
            instance = _typed(schema, given[0])
        for error in _query_validator(msgspec.json.encode(schema)).iter_errors(instance):
            errors.setdefault(key, _explained(error, schema, instance)[0][1])
            break
    return [FieldError(key, message) for key, message in errors.items()]


@functools.cache
def _query_validator(schema: bytes) -> Any:
    return jsonschema_rs.Draft202012Validator(msgspec.json.decode(schema), validate_formats=True)


def _typed(schema: dict[str, Any], value: str) -> Any:
    """A query value as the JSON its schema speaks of (a whole number for an integer)."""
    if schema.get("type") == "integer" and value.isascii() and value.lstrip("-").isdigit():
        return int(value)
    return value
