"""The HJ 212-2017 data segment: ``QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;[PNUM=…;PNO=…;]CP=&&…&&``.

:func:`parse_segment` turns the text of a checked frame into a typed :class:`Packet` or raises
:class:`SegmentError` with a :class:`SegmentErrorReason` (a metric label) and a message that
names the field. :func:`format_segment` is its inverse, for replies and simulated stations.

Times in the segment carry no zone; Chinese stations keep Beijing time, so they are read in
``tz`` (UTC+8 by default) and returned as aware datetimes. The CP area is read flat: ``;`` and
``,`` both separate ``key=value`` fields, and per-parameter fields (``w01001-Rtd``) are grouped
by their code, in the order the station sent them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType

from protocols.hj212.tables import (
    DATA_FLAG_RULES,
    NUMERIC_FIELDS,
    Command,
    Compliance,
    DataFlag,
    ExeRtn,
    QnRtn,
)

CHINA_TZ = timezone(timedelta(hours=8), "UTC+08:00")

FLAG_VERSION_2017 = 1  # V5..V0 = 000001; 000000 is HJ/T 212-2005
FLAG_A = 0x01  # a reply is required
FLAG_D = 0x02  # PNUM / PNO present (the upload is split into packets)

_QN = re.compile(r"[0-9]{17}")
_DATETIME = re.compile(r"[0-9]{14}")
_ST = re.compile(r"[0-9A-Z]{2}")
_CN = re.compile(r"[0-9]{4}")
_MN = re.compile(r"[0-9A-Za-z]{1,24}")
_FLAG = re.compile(r"[0-9]{1,3}")
_COUNT = re.compile(r"[0-9]{1,4}")
_CODE = re.compile(r"[A-Za-z0-9]{1,16}")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9]{0,31}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_CODE_NUMBER = re.compile(r"[0-9]{1,3}")
_HEADER_ORDER = ("QN", "ST", "CN", "PW", "MN", "Flag")
_QN_RTN = frozenset(int(c) for c in QnRtn)
_EXE_RTN = frozenset(int(c) for c in ExeRtn)
# Replies whose CP must carry a code (Table 9): a 9011 without QnRtn says nothing.
_REQUIRED_CP: Mapping[str, str] = {
    Command.REQUEST_REPLY: "QnRtn",
    Command.EXECUTION_RESULT: "ExeRtn",
}


class SegmentErrorReason(StrEnum):
    """Why a data segment was refused. The values are metric labels: keep them stable."""

    MALFORMED = "malformed"  # the header is not key=value;… or CP is not the last field
    MISSING_FIELD = "missing_field"  # a required field is absent (QN … CP, DataTime, PNUM/PNO)
    DUPLICATE_FIELD = "duplicate_field"  # a field given twice
    BAD_FIELD = "bad_field"  # QN, ST, CN, PW, MN, Flag, PNUM or PNO breaks its format
    MALFORMED_CP = "malformed_cp"  # CP not wrapped in && … &&, or an entry not key=value
    BAD_DATATIME = "bad_datatime"  # DataTime / SampleTime not a real yyyyMMddHHmmss time
    BAD_VALUE = "bad_value"  # a value that should be a finite number (or a reply code) is not
    BAD_DATA_FLAG = "bad_data_flag"  # an xxxxxx-Flag outside Table 8


class SegmentError(ValueError):
    """A data segment that cannot become a :class:`Packet`; ``field`` names the culprit."""

    def __init__(self, reason: SegmentErrorReason, field: str | None, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ParamValue:
    """One number of one parameter: ``w01001-Rtd=7.32`` with the code's data flag."""

    code: str
    field: str  # Rtd, Min, Avg, Max, Cou or a Zs* variant
    value: float | None  # None: the station sent the field empty
    flag: str | None  # the code's DataFlag (N, F, …), shared by all its fields


@dataclass(frozen=True, slots=True)
class ParamGroup:
    """Everything a packet says about one parameter code."""

    code: str
    values: Mapping[str, float | None]  # field -> number, in the order sent
    flag: DataFlag | None = None
    eflag: str | None = None  # vendor-defined instrument state (C4)
    sample_time: datetime | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # SN, RS, Info, …: kept as text

    @property
    def compliance(self) -> Compliance:
        """How these values enter compliance checks (no flag: evaluate them)."""
        return DATA_FLAG_RULES[self.flag].compliance if self.flag else Compliance.EVALUATE

    def param_values(self) -> list[ParamValue]:
        return [ParamValue(self.code, f, v, self.flag) for f, v in self.values.items()]


@dataclass(frozen=True, slots=True)
class Packet:
    """One data segment, typed. ``qn`` and ``pw`` stay text: replies echo them byte for byte."""

    qn: str
    st: str
    cn: str
    pw: str
    mn: str
    flag: int
    pnum: int | None = None
    pno: int | None = None
    data_time: datetime | None = None
    params: Mapping[str, ParamGroup] = field(default_factory=dict)
    cp_fields: Mapping[str, str] = field(default_factory=dict)  # other CP fields, e.g. QnRtn
    extra: Mapping[str, str] = field(default_factory=dict)  # unknown header fields, kept

    @property
    def command(self) -> Command | None:
        """The CN as a known :class:`Command`, or None for a code outside Table 9."""
        try:
            return Command(self.cn)
        except ValueError:
            return None

    @property
    def version(self) -> int:
        """Protocol version bits V5..V0: 1 = HJ 212-2017, 0 = HJ/T 212-2005."""
        return self.flag >> 2

    @property
    def needs_reply(self) -> bool:
        return bool(self.flag & FLAG_A)

    @property
    def has_subpackets(self) -> bool:
        return bool(self.flag & FLAG_D)

    def qn_time(self, tz: timezone = CHINA_TZ) -> datetime:
        """The request id read as the time it encodes (checked at parse time)."""
        return _parse_time(self.qn, tz)

    @property
    def values(self) -> list[ParamValue]:
        """Every number of every parameter, flattened, in the order sent."""
        return [pv for group in self.params.values() for pv in group.param_values()]

    @property
    def qn_rtn(self) -> QnRtn | None:
        raw = self.cp_fields.get("QnRtn")
        return None if raw is None else QnRtn(int(raw))

    @property
    def exe_rtn(self) -> ExeRtn | None:
        raw = self.cp_fields.get("ExeRtn")
        return None if raw is None else ExeRtn(int(raw))

    def to_segment(self, tz: timezone = CHINA_TZ) -> str:
        return format_segment(self, tz)


def parse_segment(segment: str, tz: timezone = CHINA_TZ) -> Packet:
    """Parse a data segment; times are read in ``tz``. Raises :class:`SegmentError`."""
    header_text, cp_text = _split_cp(segment)
    header = _parse_header(header_text)
    for name in _HEADER_ORDER:
        if name not in header:
            raise SegmentError(
                SegmentErrorReason.MISSING_FIELD, name, f"required field {name} is missing"
            )
    qn = _check(header.pop("QN"), "QN", _QN, "17 digits yyyyMMddHHmmssSSS")
    try:
        _parse_time(qn, tz)
    except ValueError:
        raise SegmentError(
            SegmentErrorReason.BAD_FIELD, "QN", f"QN {qn!r} is not a real time yyyyMMddHHmmssSSS"
        ) from None
    st = _check(header.pop("ST"), "ST", _ST, "2 characters 0-9 A-Z")
    cn = _check(header.pop("CN"), "CN", _CN, "4 digits")
    pw = header.pop("PW")
    if not pw:
        raise SegmentError(SegmentErrorReason.BAD_FIELD, "PW", "PW is empty")
    mn = _check(header.pop("MN"), "MN", _MN, "1-24 letters or digits (24 hex for EPC-96)")
    flag = int(_check(header.pop("Flag"), "Flag", _FLAG, "an integer 0-255"))
    if flag > 255:
        raise SegmentError(SegmentErrorReason.BAD_FIELD, "Flag", f"Flag {flag} is above 255")
    pnum, pno = _packet_numbers(header, flag)
    cp_fields, params = _parse_cp(cp_text, tz)
    data_time = None
    raw_time = cp_fields.pop("DataTime", None)
    if raw_time is not None:
        data_time = _parse_datatime(raw_time, "DataTime", tz)
    elif any(group.values for group in params.values()):  # numbers need a time
        raise SegmentError(
            SegmentErrorReason.MISSING_FIELD, "DataTime", "CP carries data but no DataTime"
        )
    for name, codes in (("QnRtn", _QN_RTN), ("ExeRtn", _EXE_RTN)):
        raw = cp_fields.get(name)
        if raw is not None and (_CODE_NUMBER.fullmatch(raw) is None or int(raw) not in codes):
            raise SegmentError(
                SegmentErrorReason.BAD_VALUE, name, f"{name} {raw!r} is not a code of its table"
            )
    required = _REQUIRED_CP.get(cn)
    if required and required not in cp_fields:
        raise SegmentError(
            SegmentErrorReason.MISSING_FIELD, required, f"CN {cn} needs {required} in CP"
        )
    return Packet(
        qn=qn,
        st=st,
        cn=cn,
        pw=pw,
        mn=mn,
        flag=flag,
        pnum=pnum,
        pno=pno,
        data_time=data_time,
        params=MappingProxyType(params),
        cp_fields=MappingProxyType(cp_fields),
        extra=MappingProxyType(header),
    )


def _split_cp(segment: str) -> tuple[str, str]:
    """Split at ``CP=&&``; CP must be the last field and end with ``&&``."""
    at = segment.find("CP=")
    while at > 0 and segment[at - 1] != ";":
        at = segment.find("CP=", at + 1)
    if at < 0:
        raise SegmentError(SegmentErrorReason.MISSING_FIELD, "CP", "required field CP is missing")
    body = segment[at + 3 :]
    if len(body) < 4 or not body.startswith("&&") or not body.endswith("&&"):
        raise SegmentError(
            SegmentErrorReason.MALFORMED_CP,
            "CP",
            f"CP must be the last field, written CP=&&…&&; got {body[:40]!r}",
        )
    return segment[:at], body[2:-2]


def _parse_header(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or _KEY.fullmatch(key) is None:
            raise SegmentError(
                SegmentErrorReason.MALFORMED, None, f"header item {item[:40]!r} is not key=value"
            )
        if key in out:
            raise SegmentError(
                SegmentErrorReason.DUPLICATE_FIELD, key, f"header field {key} is given twice"
            )
        out[key] = value
    return out


def _check(value: str, name: str, pattern: re.Pattern[str], expected: str) -> str:
    if pattern.fullmatch(value) is None:
        raise SegmentError(
            SegmentErrorReason.BAD_FIELD, name, f"{name} {value[:40]!r} is not {expected}"
        )
    return value


def _packet_numbers(header: dict[str, str], flag: int) -> tuple[int | None, int | None]:
    raw_pnum, raw_pno = header.pop("PNUM", None), header.pop("PNO", None)
    if raw_pnum is None or raw_pno is None:
        if flag & FLAG_D:
            missing = "PNUM" if raw_pnum is None else "PNO"
            raise SegmentError(
                SegmentErrorReason.MISSING_FIELD, missing, f"Flag {flag} has D set but no {missing}"
            )
        if raw_pnum is None and raw_pno is None:
            return None, None
        name = "PNO" if raw_pnum is not None else "PNUM"
        raise SegmentError(SegmentErrorReason.MISSING_FIELD, name, f"{name} is missing")
    pnum = int(_check(raw_pnum, "PNUM", _COUNT, "a number 1-9999"))
    pno = int(_check(raw_pno, "PNO", _COUNT, "a number 1-9999"))
    if not 1 <= pno <= pnum:
        raise SegmentError(
            SegmentErrorReason.BAD_FIELD, "PNO", f"PNO {pno} is not within 1..PNUM ({pnum})"
        )
    return pnum, pno


def _parse_cp(text: str, tz: timezone) -> tuple[dict[str, str], dict[str, ParamGroup]]:
    plain: dict[str, str] = {}
    raw: dict[str, dict[str, str]] = {}
    for entry in re.split(r"[;,]", text):
        if not entry:
            continue  # tolerate a trailing ';' or ','
        key, eq, value = entry.partition("=")
        if not eq or not key:
            raise SegmentError(
                SegmentErrorReason.MALFORMED_CP, None, f"CP entry {entry[:40]!r} is not key=value"
            )
        code, dash, suffix = key.partition("-")
        if not dash:
            if _KEY.fullmatch(key) is None:
                raise SegmentError(
                    SegmentErrorReason.MALFORMED_CP, key, f"CP field name {key[:40]!r} is invalid"
                )
            if key in plain:
                raise SegmentError(
                    SegmentErrorReason.DUPLICATE_FIELD, key, f"CP field {key} is given twice"
                )
            plain[key] = value
            continue
        if _CODE.fullmatch(code) is None or _KEY.fullmatch(suffix) is None:
            raise SegmentError(
                SegmentErrorReason.MALFORMED_CP, key, f"CP field name {key[:40]!r} is invalid"
            )
        fields = raw.setdefault(code, {})
        if suffix in fields:
            raise SegmentError(
                SegmentErrorReason.DUPLICATE_FIELD, key, f"CP field {key} is given twice"
            )
        fields[suffix] = value
    return plain, {code: _group(code, fields, tz) for code, fields in raw.items()}


def _group(code: str, fields: dict[str, str], tz: timezone) -> ParamGroup:
    values: dict[str, float | None] = {}
    extra: dict[str, str] = {}
    flag: DataFlag | None = None
    sample_time: datetime | None = None
    for suffix, raw in fields.items():
        name = f"{code}-{suffix}"
        if suffix in NUMERIC_FIELDS:
            values[suffix] = _number(raw, name)
        elif suffix == "Flag":
            try:
                flag = DataFlag(raw)
            except ValueError:
                raise SegmentError(
                    SegmentErrorReason.BAD_DATA_FLAG,
                    name,
                    f"{name} {raw[:8]!r} is not a data flag of Table 8 (N F M S D C T B)",
                ) from None
        elif suffix == "SampleTime":
            sample_time = _parse_datatime(raw, name, tz)
        else:
            extra[suffix] = raw
    return ParamGroup(
        code,
        MappingProxyType(values),
        flag,
        extra.pop("EFlag", None),
        sample_time,
        MappingProxyType(extra),
    )


def _number(raw: str, name: str) -> float | None:
    if raw == "":
        return None
    if _NUMBER.fullmatch(raw) is None:
        raise SegmentError(
            SegmentErrorReason.BAD_VALUE, name, f"{name} {raw[:40]!r} is not a number"
        )
    value = float(raw)
    if not math.isfinite(value):
        raise SegmentError(SegmentErrorReason.BAD_VALUE, name, f"{name} {raw[:40]!r} is not finite")
    return value


def _parse_time(raw: str, tz: timezone) -> datetime:
    """yyyyMMddHHmmss[SSS] of checked digits; sliced, since strptime accepts 1-digit months."""
    ms = int(raw[14:17]) if len(raw) == 17 else 0
    return datetime(
        int(raw[0:4]),
        int(raw[4:6]),
        int(raw[6:8]),
        int(raw[8:10]),
        int(raw[10:12]),
        int(raw[12:14]),
        ms * 1000,
        tzinfo=tz,
    )


def _parse_datatime(raw: str, name: str, tz: timezone) -> datetime:
    if _DATETIME.fullmatch(raw) is not None:
        try:
            return _parse_time(raw, tz)
        except ValueError:
            pass
    raise SegmentError(
        SegmentErrorReason.BAD_DATATIME, name, f"{name} {raw[:40]!r} is not a real yyyyMMddHHmmss"
    )


def format_time(moment: datetime, tz: timezone = CHINA_TZ) -> str:
    """yyyyMMddHHmmss in ``tz`` (DataTime, SampleTime); naive datetimes are taken as in ``tz``."""
    return _local(moment, tz).strftime("%Y%m%d%H%M%S")


def format_qn(moment: datetime, tz: timezone = CHINA_TZ) -> str:
    """yyyyMMddHHmmssSSS in ``tz``: a new request id."""
    local = _local(moment, tz)
    return local.strftime("%Y%m%d%H%M%S") + f"{local.microsecond // 1000:03d}"


def _local(moment: datetime, tz: timezone) -> datetime:
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment.astimezone(tz)


def format_number(value: float) -> str:
    """Shortest text that reads back as the same float, without exponent (7.32, 0.0000001)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be sent: HJ 212 values are finite numbers")
    text = format(Decimal(repr(float(value))), "f")
    return text[:-2] if text.endswith(".0") else text


def format_segment(packet: Packet, tz: timezone = CHINA_TZ) -> str:
    """The data segment for ``packet``, fields in the standard's order."""
    head = [
        f"QN={packet.qn}",
        f"ST={packet.st}",
        f"CN={packet.cn}",
        f"PW={packet.pw}",
        f"MN={packet.mn}",
        f"Flag={packet.flag}",
    ]
    if packet.pnum is not None and packet.pno is not None:
        head += [f"PNUM={packet.pnum}", f"PNO={packet.pno}"]
    head += [f"{k}={v}" for k, v in packet.extra.items()]
    items: list[str] = []
    if packet.data_time is not None:
        items.append(f"DataTime={format_time(packet.data_time, tz)}")
    items += [f"{k}={v}" for k, v in packet.cp_fields.items()]
    for group in packet.params.values():
        parts = [
            f"{group.code}-{f}={'' if v is None else format_number(v)}"
            for f, v in group.values.items()
        ]
        if group.sample_time is not None:
            parts.append(f"{group.code}-SampleTime={format_time(group.sample_time, tz)}")
        if group.flag is not None:
            parts.append(f"{group.code}-Flag={group.flag}")
        if group.eflag is not None:
            parts.append(f"{group.code}-EFlag={group.eflag}")
        parts += [f"{group.code}-{k}={v}" for k, v in group.extra.items()]
        items.append(",".join(parts))
    return ";".join(head) + ";CP=&&" + ";".join(items) + "&&"
