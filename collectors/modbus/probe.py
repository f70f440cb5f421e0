"""Onboarding probe: read a device's whole register map once and show every byte/word order.

A wrong byte or word order does not fail: it turns 0.35 NTU into 4.17e-08 NTU, a plausible
"clean water" value. So the probe shows, for every quantity, the raw registers, the value as the
profile decodes it, and the value under each of the four orders (ABCD, CDAB, BADC, DCBA) with
scale and offset applied, each marked in or out of the instrument's range. The right order is the
one that puts every quantity in range; a person sees it at a glance.

Nothing raises: a refused connection, a timeout or an exception response becomes part of the
report, with the reason in words.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from collectors.modbus.link import (
    ExceptionReply,
    ModbusLink,
    NoAnswer,
    ReadError,
    describe_read,
)
from collectors.modbus.targets import ModbusTarget
from protocols.catalog import default_catalog
from protocols.profiles import Profile
from protocols.registers import Order, RegisterField, all_orders

ORDER_NAMES: dict[tuple[Order, Order], str] = {
    ("big", "big"): "ABCD",
    ("big", "little"): "CDAB",
    ("little", "big"): "BADC",
    ("little", "little"): "DCBA",
}


@dataclass
class RequestResult:
    function: int
    start: int
    count: int
    ok: bool
    error: str | None = None
    duration_s: float = 0.0


@dataclass
class QuantityResult:
    """One quantity: its registers and what they mean under each order."""

    name: str
    function: int
    address: int
    dtype: str
    scale: float
    offset: float
    configured: str  # ORDER_NAMES value of the profile's byte/word order
    unit: str | None
    range: tuple[float, float] | None
    resolution: float | None = None
    registers: list[int] | None = None
    value: float | None = None  # decoded as configured: what the collector would store
    in_range: bool | None = None
    orders: dict[str, float] = field(default_factory=dict)  # ABCD … → value after scale/offset
    orders_in_range: dict[str, bool] = field(default_factory=dict)
    error: str | None = None

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "error"
        if self.in_range:
            return "ok"
        if any(self.orders_in_range.values()):
            return "wrong order?"
        return "out of range"


@dataclass
class ProbeReport:
    device: str
    profile_id: str
    endpoint: str
    unit_id: int
    started: str  # UTC ISO 8601
    duration_s: float = 0.0
    error: str | None = None  # the connection could not be made
    requests: list[RequestResult] = field(default_factory=list)
    quantities: list[QuantityResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(q.verdict == "ok" for q in self.quantities)

    def suggested_order(self) -> str | None:
        """The one order that puts every quantity in range, when the profile's orders do not.

        16-bit values only say something about the byte order, so they are weighed too.
        """
        read = [q for q in self.quantities if q.error is None and q.orders]
        if not read or all(q.verdict == "ok" for q in read):
            return None
        fitting = [
            name
            for name in ORDER_NAMES.values()
            if all(q.orders_in_range.get(name, False) for q in read)
        ]
        return fitting[0] if len(fitting) == 1 else None


def _range(profile: Profile, name: str) -> tuple[tuple[float, float] | None, str | None]:
    """The instrument's range (narrower than physics, so it tells orders apart better)."""
    entry = profile.quantities.get(name)
    quantity = default_catalog().quantities.get(name)
    unit = quantity.unit if quantity is not None else None
    if entry is not None and entry.range is not None:
        return (float(entry.range[0]), float(entry.range[1])), unit
    if quantity is not None and quantity.low is not None and quantity.high is not None:
        return (quantity.low, quantity.high), unit
    return None, unit


def _resolution(profile: Profile, name: str) -> float | None:
    entry = profile.quantities.get(name)
    return None if entry is None else entry.resolution


def _inside(value: float, result: QuantityResult) -> bool:
    """Inside the range, and not a speck below the resolution (a misread float is often 1e-8)."""
    if not math.isfinite(value):
        return False
    if result.range is not None and not result.range[0] <= value <= result.range[1]:
        return False
    return value == 0 or result.resolution is None or abs(value) >= result.resolution


def _interpret(result: QuantityResult, f: RegisterField, registers: list[int]) -> None:
    result.registers = list(registers)
    result.value = f.decode(registers)
    result.in_range = _inside(result.value, result)
    for order, raw in all_orders(registers, f.dtype).items():
        name = ORDER_NAMES[order]
        value = float(raw) * f.scale + f.offset
        result.orders[name] = value
        result.orders_in_range[name] = _inside(value, result)


async def probe(profile: Profile, target: ModbusTarget) -> ProbeReport:
    """Read every register of ``profile``'s map from ``target`` once; never raises for I/O."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    report = ProbeReport(
        device=target.device.device,
        profile_id=profile.id,
        endpoint=target.describe_endpoint(),
        unit_id=target.unit_id,
        started=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
    fields = profile.register_fields
    results: dict[str, QuantityResult] = {}
    for name, f in sorted(fields.items(), key=lambda i: (i[1].function, i[1].address)):
        bounds, unit = _range(profile, name)
        results[name] = QuantityResult(
            name=name,
            function=f.function,
            address=f.address,
            dtype=f.dtype,
            scale=f.scale,
            offset=f.offset,
            configured=ORDER_NAMES[(f.byte_order, f.word_order)],
            unit=unit,
            range=bounds,
            resolution=_resolution(profile, name),
        )
    report.quantities = list(results.values())
    link = ModbusLink(target)
    try:
        await link.connect(target.timeout_s)
    except NoAnswer as exc:
        report.error = str(exc)
        for result in report.quantities:
            result.error = "not read: no connection"
        report.duration_s = loop.time() - began
        return report
    try:
        for request in profile.read_plan:
            t0 = loop.time()
            try:
                registers = await _read(
                    link, target, request.function, request.start, request.count
                )
            except ReadError as exc:
                report.requests.append(
                    RequestResult(
                        request.function,
                        request.start,
                        request.count,
                        False,
                        str(exc),
                        loop.time() - t0,
                    )
                )
                if isinstance(exc, ExceptionReply) and exc.code == 2 and len(request.slots) > 1:
                    # The grouped read touched an address the device refuses: find which field.
                    for slot in request.slots:
                        await _read_alone(link, target, fields[slot.name], results[slot.name])
                else:
                    for slot in request.slots:
                        results[slot.name].error = str(exc)
                continue
            report.requests.append(
                RequestResult(
                    request.function,
                    request.start,
                    request.count,
                    True,
                    duration_s=loop.time() - t0,
                )
            )
            for name, regs in request.extract(registers).items():
                _interpret(results[name], fields[name], list(regs))
    finally:
        link.close()
    report.duration_s = loop.time() - began
    return report


async def _read(
    link: ModbusLink, target: ModbusTarget, function: int, start: int, count: int
) -> list[int]:
    return await link.read(function, start, count, target.unit_id, target.timeout_s)


async def _read_alone(
    link: ModbusLink, target: ModbusTarget, f: RegisterField, result: QuantityResult
) -> None:
    try:
        registers = await _read(link, target, f.function, f.address, f.count)
    except ReadError as exc:
        result.error = f"read alone: {exc}"
        return
    _interpret(result, f, registers)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.6g}"


def format_report(report: ProbeReport) -> str:
    """A plain-text table: one row per quantity, one column per byte/word order.

    ``*`` marks the profile's order; ``ok``/``OUT`` whether the value is plausible: inside the
    instrument's range and not smaller than its resolution.
    """
    lines = [
        f"Modbus probe: device {report.device}, profile {report.profile_id}, "
        f"{report.endpoint} unit {report.unit_id}, at {report.started}, "
        f"{report.duration_s * 1000:.0f} ms",
    ]
    if report.error is not None:
        lines.append(f"ERROR: {report.error}")
        return "\n".join(lines) + "\n"
    for r in report.requests:
        state = "ok" if r.ok else f"FAILED: {r.error}"
        lines.append(
            f"  {describe_read(r.function, r.start, r.count)}: {state} "
            f"({r.duration_s * 1000:.0f} ms)"
        )
    hint = report.suggested_order()
    header = [
        "quantity",
        "fn:addr",
        "dtype",
        "registers",
        "as configured",
        *ORDER_NAMES.values(),
        "range",
        "verdict",
    ]
    rows: list[list[str]] = []
    for q in report.quantities:
        where = f"{q.function}:{q.address}"
        bounds = "-" if q.range is None else f"[{q.range[0]:g}, {q.range[1]:g}] {q.unit or ''}"
        if q.error is not None or q.registers is None:
            rows.append(
                [
                    q.name,
                    where,
                    q.dtype,
                    "-",
                    "-",
                    "",
                    "",
                    "",
                    "",
                    bounds.strip(),
                    f"ERROR: {q.error}",
                ]
            )
            continue
        registers = " ".join(f"{r:04X}" for r in q.registers)
        configured = f"{_number(q.value)} {'ok' if q.in_range else 'OUT'} ({q.configured})"
        cells = []
        for name in ORDER_NAMES.values():
            mark = "*" if name == q.configured else " "
            state = "ok" if q.orders_in_range[name] else "OUT"
            cells.append(f"{mark}{_number(q.orders[name])} {state}")
        verdict = q.verdict
        if verdict == "ok" and hint and q.orders_in_range[hint] and q.orders[hint] != q.value:
            verdict = f"ok? {hint} gives {_number(q.orders[hint])}"  # plausible both ways
        rows.append(
            [q.name, where, q.dtype, registers, configured, *cells, bounds.strip(), verdict]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines.append("")
    for row in [header, *rows]:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    lines.append("")
    lines.append(
        "* the profile's order; ok/OUT: inside/outside the instrument's range "
        "(a value below the resolution counts as outside). "
        "ABCD = byte big/word big, CDAB = big/little, BADC = little/big, "
        "DCBA = little/little."
    )
    if hint is not None:
        byte_order, word_order = next(k for k, v in ORDER_NAMES.items() if v == hint)
        lines.append(
            f"Hint: every value is in range as {hint}: set byte_order: {byte_order}, "
            f"word_order: {word_order} in the profile (or per register)."
        )
    elif report.ok:
        lines.append("Every value is in range with the profile's orders.")
    return "\n".join(lines) + "\n"
