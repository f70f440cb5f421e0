"""The Modbus register codec: values in registers, byte/word order, scaling, request grouping."""

from __future__ import annotations

import math
import re
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from protocols.registers import (
    DTYPES,
    ORDERS,
    RegisterField,
    Slot,
    Span,
    all_orders,
    decode,
    encode,
    plan_reads,
    raw_bounds,
    register_count,
    shortest_float32,
)

COMBOS = [(d, b, w) for d in DTYPES for b in ORDERS for w in ORDERS]
register = st.integers(0, 0xFFFF)


def raw_values(dtype: str) -> st.SearchStrategy[float]:
    if dtype == "float32":
        return st.floats(width=32, allow_nan=False)
    if dtype == "float64":
        return st.floats(allow_nan=False)
    low, high = raw_bounds(dtype)  # type: ignore[arg-type]
    return st.integers(int(low), int(high))


# --- single values ---------------------------------------------------------------------------


def test_register_count_per_dtype() -> None:
    assert {d: register_count(d) for d in DTYPES} == {
        "int16": 1,
        "uint16": 1,
        "int32": 2,
        "uint32": 2,
        "float32": 2,
        "float64": 4,
    }


@pytest.mark.parametrize(
    ("value", "dtype", "byte_order", "word_order", "registers"),
    [
        (123.456, "float32", "big", "big", [0x42F6, 0xE979]),  # ABCD
        (123.456, "float32", "big", "little", [0xE979, 0x42F6]),  # CDAB
        (123.456, "float32", "little", "big", [0xF642, 0x79E9]),  # BADC
        (123.456, "float32", "little", "little", [0x79E9, 0xF642]),  # DCBA
        (-1, "int16", "big", "big", [0xFFFF]),
        (0x1234, "uint16", "little", "big", [0x3412]),
        (-2, "int32", "big", "big", [0xFFFF, 0xFFFE]),
        (0x12345678, "uint32", "big", "little", [0x5678, 0x1234]),
        (1.0, "float64", "big", "big", [0x3FF0, 0, 0, 0]),
        (1.0, "float64", "little", "little", [0, 0, 0, 0xF03F]),
        (-2.5, "float64", "big", "little", [0, 0, 0, 0xC004]),
    ],
)
def test_known_vectors(
    value: float, dtype: str, byte_order: str, word_order: str, registers: list[int]
) -> None:
    assert encode(value, dtype, byte_order, word_order) == registers  # type: ignore[arg-type]
    decoded = decode(registers, dtype, byte_order, word_order)  # type: ignore[arg-type]
    if dtype == "float32":
        assert shortest_float32(decoded) == value
    else:
        assert decoded == value


@pytest.mark.parametrize(("dtype", "byte_order", "word_order"), COMBOS)
@given(data=st.data())
def test_value_round_trips_through_registers(
    dtype: str, byte_order: str, word_order: str, data: st.DataObject
) -> None:
    value = data.draw(raw_values(dtype))
    registers = encode(value, dtype, byte_order, word_order)  # type: ignore[arg-type]
    assert len(registers) == register_count(dtype)  # type: ignore[arg-type]
    assert all(0 <= r <= 0xFFFF for r in registers)
    decoded = decode(registers, dtype, byte_order, word_order)  # type: ignore[arg-type]
    assert decoded == value
    assert math.copysign(1, decoded) == math.copysign(1, value)  # -0.0 stays -0.0


@pytest.mark.parametrize(("dtype", "byte_order", "word_order"), COMBOS)
@given(data=st.data())
def test_registers_round_trip_through_value(
    dtype: str, byte_order: str, word_order: str, data: st.DataObject
) -> None:
    registers = data.draw(st.lists(register, min_size=register_count(dtype), max_size=4))  # type: ignore[arg-type]
    registers = registers[: register_count(dtype)]  # type: ignore[arg-type]
    value = decode(registers, dtype, byte_order, word_order)  # type: ignore[arg-type]
    assume(not math.isnan(value))  # NaN payloads are not guaranteed to survive a float round trip
    assert encode(value, dtype, byte_order, word_order) == registers  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: encode(40000, "int16"), "outside int16's range"),
        (lambda: encode(-1, "uint32"), "outside uint32's range"),
        (lambda: encode(1.5, "uint16"), "cannot hold the fraction 1.5"),
        (lambda: encode(1e39, "float32"), "does not fit float32"),
        (lambda: encode(1, "float33"), "'float33' is not one of int16, uint16"),  # type: ignore[arg-type]
        (lambda: encode(1, "int16", "middle"), "byte_order 'middle' is not one of big, little"),  # type: ignore[arg-type]
        (lambda: decode([1], "float32"), "float32 needs 2 register(s), got 1"),
        (lambda: decode([70000], "uint16"), "70000 is not an integer 0..65535"),
    ],
)
def test_codec_refuses_what_it_cannot_represent(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_integral_float_encodes_into_an_integer_register() -> None:
    assert encode(7.0, "int16") == [7]


# --- agreement with pymodbus -----------------------------------------------------------------

PYMODBUS_TYPES = {
    "int16": ModbusClientMixin.DATATYPE.INT16,
    "uint16": ModbusClientMixin.DATATYPE.UINT16,
    "int32": ModbusClientMixin.DATATYPE.INT32,
    "uint32": ModbusClientMixin.DATATYPE.UINT32,
    "float32": ModbusClientMixin.DATATYPE.FLOAT32,
    "float64": ModbusClientMixin.DATATYPE.FLOAT64,
}


@pytest.mark.parametrize("word_order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_codec_agrees_with_pymodbus_for_big_endian_bytes(
    dtype: str, word_order: str, data: st.DataObject
) -> None:
    """pymodbus only knows big-endian bytes within a register; there both must agree exactly."""
    kind = PYMODBUS_TYPES[dtype]
    value = data.draw(raw_values(dtype))
    ours = encode(value, dtype, "big", word_order)  # type: ignore[arg-type]
    assert ours == ModbusClientMixin.convert_to_registers(value, kind, word_order=word_order)  # type: ignore[arg-type]
    theirs = ModbusClientMixin.convert_from_registers(ours, kind, word_order=word_order)  # type: ignore[arg-type]
    assert decode(ours, dtype, "big", word_order) == theirs  # type: ignore[arg-type]


# --- the onboarding probe --------------------------------------------------------------------


def test_all_orders_shows_the_value_under_every_order() -> None:
    orders = all_orders([0x42F6, 0xE979], "float32")
    assert list(orders) == [
        ("big", "big"),
        ("big", "little"),
        ("little", "big"),
        ("little", "little"),
    ]
    assert orders["big", "big"] == 123.456
    assert all(abs(v) > 1e20 for k, v in orders.items() if k != ("big", "big"))


@pytest.mark.parametrize(("byte_order", "word_order"), [(b, w) for b in ORDERS for w in ORDERS])
def test_all_orders_finds_the_device_order(byte_order: str, word_order: str) -> None:
    registers = encode(21.5, "float32", byte_order, word_order)  # type: ignore[arg-type]
    matches = [k for k, v in all_orders(registers, "float32").items() if v == 21.5]
    assert matches == [(byte_order, word_order)]


def test_all_orders_of_a_single_register_depends_only_on_byte_order() -> None:
    orders = all_orders([0x0102], "uint16")
    assert orders["big", "big"] == orders["big", "little"] == 0x0102
    assert orders["little", "big"] == orders["little", "little"] == 0x0201


# --- scaled fields ---------------------------------------------------------------------------


def test_scaled_integer_decodes_to_the_decimal_the_device_meant() -> None:
    ph = RegisterField("ph", 3, 4, "uint16", scale=0.01)
    assert ph.decode([721]) == 7.21  # 721 * 0.01 is 7.210000000000001 in binary floating point
    assert ph.encode(7.21) == [721]


def test_offset_lets_an_unsigned_register_carry_negative_values() -> None:
    temp = RegisterField("t", 6, 3, "uint16", scale=0.1, offset=-40)
    assert temp.decode([250]) == -15.0
    assert temp.encode(-15.0) == [250]
    assert temp.value_bounds() == pytest.approx((-40.0, 6513.5))


def test_float32_field_decodes_to_its_shortest_decimal() -> None:
    turbidity = RegisterField("turbidity_ntu", 0, 4, "float32", word_order="little")
    assert turbidity.encode(0.35) == [0x3333, 0x3EB3]
    assert turbidity.decode([0x3333, 0x3EB3]) == 0.35  # not 0.3499999940395355


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_shortest_float32_is_the_same_float32(value: float) -> None:
    tidy = shortest_float32(value)
    assert struct.pack(">f", tidy) == struct.pack(">f", value)
    assert len(repr(tidy)) <= len(repr(value))


def test_field_refuses_zero_scale_and_addresses_past_the_end() -> None:
    with pytest.raises(ValueError, match="scale"):
        RegisterField("x", 0, scale=0)
    with pytest.raises(ValueError, match=r"exceeds 0\.\.65535"):
        RegisterField("x", 65535, dtype="float32")
    with pytest.raises(ValueError, match="function 6"):
        RegisterField("x", 0, function=6)  # type: ignore[arg-type]


# --- request grouping ------------------------------------------------------------------------


def plan(spans: list[Span], **kw: int) -> list[tuple[int, int, int, tuple[Slot, ...]]]:
    return [(r.function, r.start, r.count, r.slots) for r in plan_reads(spans, **kw)]


def test_adjacent_fields_merge_into_one_request() -> None:
    spans = [Span("a", 3, 10, 2), Span("b", 3, 12, 1), Span("c", 3, 13, 4)]
    assert plan(spans) == [
        (3, 10, 7, (Slot("a", 0, 2), Slot("b", 2, 1), Slot("c", 3, 4))),
    ]


def test_unsorted_input_is_planned_in_address_order() -> None:
    spans = [Span("c", 4, 13, 4), Span("a", 4, 10, 2), Span("b", 4, 12, 1)]
    assert [s.name for s in plan_reads(spans)[0].slots] == ["a", "b", "c"]


def test_gap_up_to_max_gap_is_bridged_and_one_more_splits() -> None:
    bridged = [Span("a", 3, 0, 2), Span("b", 3, 10, 1)]  # registers 2..9 unread: gap of 8
    assert plan(bridged, max_gap=8) == [(3, 0, 11, (Slot("a", 0, 2), Slot("b", 10, 1)))]
    split = [Span("a", 3, 0, 2), Span("b", 3, 11, 1)]  # gap of 9
    assert plan(split, max_gap=8) == [
        (3, 0, 2, (Slot("a", 0, 2),)),
        (3, 11, 1, (Slot("b", 0, 1),)),
    ]


def test_max_gap_zero_reads_only_mapped_registers() -> None:
    spans = [Span("a", 3, 0, 1), Span("b", 3, 1, 1), Span("c", 3, 3, 1)]
    assert [(s, c) for _, s, c, _ in plan(spans, max_gap=0)] == [(0, 2), (3, 1)]


def test_request_is_split_at_max_count() -> None:
    fits = [Span(f"r{i}", 3, i * 2, 2) for i in range(62)] + [Span("last", 3, 124, 1)]
    assert [(s, c) for _, s, c, _ in plan(fits)] == [(0, 125)]
    spills = [*fits[:-1], Span("last", 3, 124, 2)]  # would make 126 registers
    assert [(s, c) for _, s, c, _ in plan(spills)] == [(0, 124), (124, 2)]
    assert [(s, c) for _, s, c, _ in plan(spills, max_count=10)][:2] == [(0, 10), (10, 10)]


def test_functions_are_never_mixed_in_one_request() -> None:
    spans = [Span("in", 4, 0, 2), Span("hold", 3, 0, 2), Span("hold2", 3, 2, 1)]
    assert plan(spans) == [
        (3, 0, 3, (Slot("hold", 0, 2), Slot("hold2", 2, 1))),
        (4, 0, 2, (Slot("in", 0, 2),)),
    ]


def test_field_longer_than_max_count_is_refused() -> None:
    with pytest.raises(ValueError, match="big: 4 registers exceed 2 per request"):
        plan_reads([Span("big", 3, 0, 4)], max_count=2)


def test_extract_slices_each_field_from_its_response() -> None:
    (request,) = plan_reads([Span("a", 3, 5, 2), Span("b", 3, 9, 1)])
    response = [1, 2, 0, 0, 9]
    assert request.extract(response) == {"a": [1, 2], "b": [9]}
    with pytest.raises(ValueError, match="expected 5 registers, got 2"):
        request.extract([1, 2])


def _optimum(spans: list[Span], max_count: int, max_gap: int) -> int:
    """Fewest requests, by dynamic programming over runs of address-sorted fields."""
    total = 0
    for function in {s.function for s in spans}:
        row = sorted((s for s in spans if s.function == function), key=lambda s: s.address)
        best = [0] + [len(row)] * len(row)  # best[i]: requests for the first i fields
        for i in range(len(row)):
            for j in range(i, len(row)):
                gaps = all(
                    row[k + 1].address - (row[k].address + row[k].count) <= max_gap
                    for k in range(i, j)
                )
                length = row[j].address + row[j].count - row[i].address
                if gaps and length <= max_count:
                    best[j + 1] = min(best[j + 1], best[i] + 1)
        total += best[len(row)]
    return total


@st.composite
def layouts(draw: st.DrawFn) -> list[Span]:
    spans, address = [], 0
    for i in range(draw(st.integers(1, 25))):
        address += draw(st.integers(0, 20))
        count = draw(st.sampled_from([1, 2, 4]))
        spans.append(Span(f"f{i}", draw(st.sampled_from([3, 4])), address, count))
        address += count
    return draw(st.permutations(spans))


@given(layouts(), st.integers(4, 40), st.integers(0, 12))
def test_plan_is_valid_and_minimal(spans: list[Span], max_count: int, max_gap: int) -> None:
    requests = plan_reads(spans, max_count=max_count, max_gap=max_gap)
    placed = {}
    for r in requests:
        assert r.count <= max_count
        for slot in r.slots:
            placed[slot.name] = (r.function, r.start + slot.offset, slot.count)
            assert slot.offset + slot.count <= r.count
    assert placed == {s.name: (s.function, s.address, s.count) for s in spans}
    assert len(requests) == _optimum(list(spans), max_count, max_gap)
