"""google.protobuf.Value <-> JSON-shaped Python values, for item values.

Hand-written instead of json_format because it is on the hot path of every item call and needs to
name the field when a value cannot be JSON (NaN and infinities have no JSON form).
"""

from __future__ import annotations

import math

from google.protobuf.struct_pb2 import Value

from app.domain.errors import InvalidArgument
from app.domain.models import JSON

# Doubles hold every integer up to 2**53 exactly; integral values in that range come back as int so that
# `1` stored over gRPC reads as `1` over HTTP, not `1.0`.
_MAX_EXACT_INT = 2**53


def value_to_python(value: Value, *, field: str = "value") -> JSON:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument("numbers must be finite (JSON has no NaN or Infinity)", field=field)
        if number.is_integer() and -_MAX_EXACT_INT <= number <= _MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: value_to_python(v, field=field) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [value_to_python(v, field=field) for v in value.list_value.values]
    return None  # null_value, or no kind set (proto3 has no other way to say null)


def python_to_value(obj: JSON, out: Value) -> None:
    """Fill `out` (a message field, so nothing is copied) from a JSON-shaped value."""
    if obj is None:
        out.null_value = 0
    elif isinstance(obj, bool):  # before int: bool is an int subclass
        out.bool_value = obj
    elif isinstance(obj, str):
        out.string_value = obj
    elif isinstance(obj, int | float):
        try:
            out.number_value = float(obj)
        except OverflowError:  # JSON allows integers no double can hold: saturate, do not fail the read
            out.number_value = math.inf if obj > 0 else -math.inf
    elif isinstance(obj, dict):
        struct = out.struct_value
        struct.SetInParent()  # an empty dict is still a struct, not "unset"
        for key, item in obj.items():
            python_to_value(item, struct.fields[str(key)])
    elif isinstance(obj, list | tuple):
        values = out.list_value
        values.SetInParent()
        for item in obj:
            python_to_value(item, values.values.add())
    else:
        raise TypeError(f"not a JSON value: {type(obj).__name__}")
