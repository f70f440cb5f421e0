"""Modbus register codec: numbers in 16-bit registers, and the fewest reads that fetch a map.

Pure functions, no connection: collectors decode what they read, simulators encode what they
serve, and the onboarding probe shows every byte/word order so a person can pick the right one.

A register is an int 0..65535 as a Modbus client returns it (the wire sends it big-endian).
Devices disagree on two things, and this module keeps them apart:

- **byte order**: within one register, is the value's more significant byte first (``big``) or
  second (``little``, the bytes of each register swapped)?
- **word order**: for values of 2 or 4 registers, does the first register hold the most
  significant word (``big``) or the least (``little``, registers reversed)?

Names seen in device manuals: ABCD = big/big, CDAB = big/little ("word swap"), BADC =
little/big ("byte swap"), DCBA = little/little. See docs/profiles.md for a worked example.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import groupby
from typing import Literal, NamedTuple, Protocol, get_args

DType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64"]
Order = Literal["big", "little"]
Function = Literal[3, 4]  # 3 read holding registers, 4 read input registers

DTYPES: tuple[DType, ...] = get_args(DType)
ORDERS: tuple[Order, ...] = get_args(Order)
FUNCTIONS: tuple[Function, ...] = get_args(Function)
# struct format character and number of registers, per dtype
_STRUCT: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
MAX_READ = 125  # registers per read request: the Modbus limit for functions 3 and 4
MAX_ADDRESS = 65535


def _spec(dtype: str) -> tuple[str, int]:
    try:
        return _STRUCT[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}") from None


def _check_order(byte_order: str, word_order: str) -> None:
    for what, order in (("byte_order", byte_order), ("word_order", word_order)):
        if order not in ORDERS:
            raise ValueError(f"{what} {order!r} is not one of big, little")


def register_count(dtype: DType) -> int:
    """How many 16-bit registers a value of ``dtype`` occupies (1, 2 or 4)."""
    return _spec(dtype)[1]


def is_integer(dtype: DType) -> bool:
    return _spec(dtype)[0] not in "fd"


def raw_bounds(dtype: DType) -> tuple[float, float]:
    """The smallest and largest raw value ``dtype`` can hold (finite, for floats)."""
    code, count = _spec(dtype)
    if code == "f":
        return -3.4028234663852886e38, 3.4028234663852886e38
    if code == "d":
        return -1.7976931348623157e308, 1.7976931348623157e308
    bits = 16 * count
    if code.isupper():
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def decode(
    registers: Sequence[int],
    dtype: DType,
    byte_order: Order = "big",
    word_order: Order = "big",
) -> int | float:
    """The raw value held by ``registers`` (exactly ``register_count(dtype)`` of them)."""
    code, count = _spec(dtype)
    _check_order(byte_order, word_order)
    if len(registers) != count:
        raise ValueError(f"{dtype} needs {count} register(s), got {len(registers)}")
    words = registers if word_order == "big" else list(reversed(registers))
    data = bytearray()
    for word in words:
        if not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word!r} is not an integer 0..65535")
        data += word.to_bytes(2, byte_order)
    return struct.unpack(">" + code, data)[0]


def encode(
    value: float,
    dtype: DType,
    byte_order: Order = "big",
    word_order: Order = "big",
) -> list[int]:
    """The registers that hold raw ``value``; integer dtypes refuse fractions and overflow."""
    code, count = _spec(dtype)
    _check_order(byte_order, word_order)
    if is_integer(dtype):
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{dtype} cannot hold the fraction {value!r}")
            value = int(value)
        low, high = raw_bounds(dtype)
        if not low <= value <= high:
            raise ValueError(f"{value!r} is outside {dtype}'s range [{low}, {high}]")
    try:
        data = struct.pack(">" + code, value)
    except (struct.error, OverflowError) as exc:  # float32 overflow: 1e39
        raise ValueError(f"{value!r} does not fit {dtype}: {exc}") from None
    words = [int.from_bytes(data[i : i + 2], byte_order) for i in range(0, 2 * count, 2)]
    return words if word_order == "big" else words[::-1]


def all_orders(registers: Sequence[int], dtype: DType) -> dict[tuple[Order, Order], int | float]:
    """The value under each (byte_order, word_order), so a person can see which one is sensible.

    Keys run ABCD, CDAB, BADC, DCBA; float32 values are shown as their shortest decimal.
    """
    tidy = shortest_float32 if dtype == "float32" else (lambda v: v)
    return {(b, w): tidy(decode(registers, dtype, b, w)) for b in ORDERS for w in ORDERS}


def shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32, so 123.456 is not stored as 123.45600128."""
    if not math.isfinite(value):
        return value
    target = struct.pack(">f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == target:
            return candidate
    return value  # unreachable: 9 significant digits always round-trip a float32


def _decimals(number: float) -> int:
    exponent = Decimal(repr(float(number))).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


@dataclass(frozen=True, slots=True)
class RegisterField:
    """One value in a register map: where it lives and how to turn it into a physical value.

    value = raw * scale + offset. An integer raw value is rounded to the decimals of scale and
    offset (721 * 0.01 is 7.21, not 7.210000000000001); a float32 to its shortest decimal.
    """

    name: str
    address: int
    function: Function = 3
    dtype: DType = "uint16"
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        count = register_count(self.dtype)  # also checks dtype
        _check_order(self.byte_order, self.word_order)
        if self.function not in FUNCTIONS:
            raise ValueError(f"{self.name}: function {self.function!r} is not one of 3, 4")
        if not 0 <= self.address <= MAX_ADDRESS + 1 - count:
            raise ValueError(f"{self.name}: address {self.address} + {count} exceeds 0..65535")
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise ValueError(f"{self.name}: scale must be finite and non-zero, offset finite")

    @property
    def count(self) -> int:
        return register_count(self.dtype)

    @property
    def end(self) -> int:
        """One past the last register."""
        return self.address + self.count

    def decode(self, registers: Sequence[int]) -> float:
        raw = decode(registers, self.dtype, self.byte_order, self.word_order)
        if self.dtype == "float32":
            raw = shortest_float32(raw)
        value = raw * self.scale + self.offset
        if isinstance(raw, int):
            value = round(value, max(_decimals(self.scale), _decimals(self.offset)))
        return float(value)

    def encode(self, value: float) -> list[int]:
        """Registers that decode to ``value`` (integer dtypes round to the nearest step)."""
        raw = (value - self.offset) / self.scale
        if is_integer(self.dtype):
            if not math.isfinite(raw):
                raise ValueError(f"{self.name}: {value!r} cannot be stored in {self.dtype}")
            raw = round(raw)
        return encode(raw, self.dtype, self.byte_order, self.word_order)

    def value_bounds(self) -> tuple[float, float]:
        """The physical values this field can express, given its dtype, scale and offset."""
        low, high = (b * self.scale + self.offset for b in raw_bounds(self.dtype))
        return min(low, high), max(low, high)


class Span(NamedTuple):
    """What request grouping needs to know about a field."""

    name: str
    function: int
    address: int
    count: int


class _Spanning(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def function(self) -> int: ...
    @property
    def address(self) -> int: ...
    @property
    def count(self) -> int: ...


class Slot(NamedTuple):
    """Where one field's registers sit in a response: ``response[offset:offset + count]``."""

    name: str
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class ReadRequest:
    function: int
    start: int
    count: int
    slots: tuple[Slot, ...]

    def extract(self, response: Sequence[int]) -> dict[str, Sequence[int]]:
        """Each field's registers from this request's response."""
        if len(response) < self.count:
            raise ValueError(
                f"function {self.function} at {self.start}: expected {self.count} registers, "
                f"got {len(response)}"
            )
        return {s.name: response[s.offset : s.offset + s.count] for s in self.slots}


def plan_reads(
    fields: Iterable[_Spanning], max_count: int = MAX_READ, max_gap: int = 8
) -> list[ReadRequest]:
    """The fewest read requests that fetch every field, each at most ``max_count`` registers.

    Fields of one function are merged left to right while the unread gap before the next field
    is at most ``max_gap`` registers and the request stays within ``max_count``. Each split is
    forced, so for non-overlapping fields no plan has fewer requests. Bridging a gap reads
    registers nobody asked for; set ``max_gap=0`` for devices that refuse unmapped addresses.
    """
    if not 1 <= max_count <= MAX_READ:
        raise ValueError(f"max_count {max_count} is not within 1..{MAX_READ}")
    if max_gap < 0:
        raise ValueError(f"max_gap {max_gap} is negative")
    spans = sorted(fields, key=lambda f: (f.function, f.address, f.count))
    requests: list[ReadRequest] = []
    for function, group in groupby(spans, key=lambda f: f.function):
        start = end = -1
        members: list[_Spanning] = []
        for field in group:
            if field.count > max_count:
                raise ValueError(
                    f"{field.name}: {field.count} registers exceed {max_count} per request"
                )
            field_end = field.address + field.count
            if (
                members
                and field.address - end <= max_gap
                and max(end, field_end) - start <= (max_count)
            ):
                end = max(end, field_end)
            else:
                if members:
                    requests.append(_request(function, start, end, members))
                start, end, members = field.address, field_end, []
            members.append(field)
        if members:
            requests.append(_request(function, start, end, members))
    return requests


def _request(function: int, start: int, end: int, members: list[_Spanning]) -> ReadRequest:
    slots = tuple(Slot(f.name, f.address - start, f.count) for f in members)
    return ReadRequest(function, start, end - start, slots)
