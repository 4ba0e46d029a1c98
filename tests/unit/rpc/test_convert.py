"""google.protobuf.Value <-> JSON values: exact round trips for everything JSON can say."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from app.domain.errors import InvalidArgument
from app.rpc.convert import python_to_value, value_to_python

EXACT = 2**53
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-EXACT, max_value=EXACT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def to_value(obj: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    python_to_value(obj, value)
    return value


@given(json_values)
def test_round_trip_is_exact_and_agrees_with_json_format(obj: Any) -> None:
    value = to_value(obj)
    assert value_to_python(value) == obj
    assert json_format.MessageToDict(value) == obj
    assert value_to_python(struct_pb2.Value.FromString(value.SerializeToString())) == obj


def test_integral_numbers_come_back_as_int_and_big_ones_as_float() -> None:
    assert type(value_to_python(to_value(3))) is int
    assert type(value_to_python(to_value(2.5))) is float
    assert value_to_python(to_value(2**60)) == float(2**60)
    assert to_value(10**400).number_value == math.inf


def test_empty_containers_stay_containers() -> None:
    assert to_value({}).WhichOneof("kind") == "struct_value"
    assert to_value([]).WhichOneof("kind") == "list_value"
    assert value_to_python(struct_pb2.Value()) is None  # no kind set reads as null


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_invalid_and_name_the_field(number: float) -> None:
    value = struct_pb2.Value()
    value.list_value.values.add().number_value = number
    with pytest.raises(InvalidArgument) as info:
        value_to_python(value)
    assert info.value.field == "value"


def test_non_json_objects_are_refused() -> None:
    with pytest.raises(TypeError):
        to_value({"when": object()})
