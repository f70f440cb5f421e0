"""HJ 212-2017 codec: the standard's own example, framing under any chunking, segment errors,
replies and the code map. Pure: no servers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.hj212 import (
    CHINA_TZ,
    DATA_COMMANDS,
    DATA_FLAG_RULES,
    MAX_SEGMENT,
    CodeMapError,
    Command,
    Compliance,
    DataFlag,
    ExeRtn,
    Frame,
    FrameDecoder,
    FrameError,
    FrameErrorReason,
    Packet,
    ParamGroup,
    ParamValue,
    QnRtn,
    SegmentError,
    SegmentErrorReason,
    crc16,
    data_reply,
    decode_frame,
    encode_frame,
    execution_result,
    format_segment,
    load_code_map,
    notification_reply,
    parse_segment,
    reply_for,
    request_reply,
)
from protocols.hj212.crc import crc16_reference
from protocols.hj212.frame import MAX_FRAME

# standards.md §6.2: the standard's Appendix A example, then three packets built and checked there.
STANDARD_EXAMPLE = (
    b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
    b"CP=&&RtdInterval=30&&1C80\r\n"
)
REALTIME = (
    b"##0201QN=20240315103000000;ST=32;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
    b"CP=&&DataTime=20240315103000;w01001-Rtd=7.32,w01001-Flag=N;w01010-Rtd=18.6,w01010-Flag=N;"
    b"w01014-Rtd=412.5,w01014-Flag=N&&7800\r\n"
)
HOURLY = (
    b"##0234QN=20240315110000001;ST=32;CN=2061;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
    b"CP=&&DataTime=20240315100000;w01003-Min=0.12,w01003-Avg=0.18,w01003-Max=0.31,"
    b"w01003-Flag=N;w01001-Min=7.20,w01001-Avg=7.31,w01001-Max=7.40,w01001-Flag=N&&6600\r\n"
)
DATA_ACK = (
    b"##0087QN=20240315103000000;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;Flag=4;"
    b"CP=&&&&D1C1\r\n"
)
EXAMPLES = [STANDARD_EXAMPLE, REALTIME, HOURLY, DATA_ACK]
HEAD = "QN=20240315103000000;ST=32;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"


def segment_of(frame: bytes) -> bytes:
    return frame[6:-6]


def decode_all(*chunks: bytes) -> list[Frame | FrameError]:
    decoder = FrameDecoder()
    events: list[Frame | FrameError] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def reasons(events: list[Frame | FrameError]) -> list[str]:
    return ["frame" if isinstance(e, Frame) else str(e.reason) for e in events]


# -- CRC -----------------------------------------------------------------------------------------


def test_standard_example_crc_verifies_as_written() -> None:
    segment = segment_of(STANDARD_EXAMPLE)
    assert len(segment) == 101 == int(STANDARD_EXAMPLE[2:6])
    assert crc16(segment) == 0x1C80


def test_crc_is_not_modbus() -> None:
    """The trap the reference warns about: Modbus CRC-16 gives 0x0759 on the same bytes."""
    reg = 0xFFFF
    for byte in segment_of(STANDARD_EXAMPLE):
        reg ^= byte
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
    assert reg == 0x0759 != crc16(segment_of(STANDARD_EXAMPLE))


@pytest.mark.parametrize("frame", EXAMPLES)
def test_reference_packets_crc_and_length(frame: bytes) -> None:
    segment = segment_of(frame)
    assert len(segment) == int(frame[2:6])
    assert crc16(segment) == int(frame[-6:-2], 16)


@given(st.binary(max_size=300))
def test_table_crc_equals_the_standard_algorithm(data: bytes) -> None:
    assert crc16(data) == crc16_reference(data)


@given(st.binary(min_size=1, max_size=200), st.data())
def test_crc_catches_every_single_byte_error(data: bytes, draw: st.DataObject) -> None:
    at = draw.draw(st.integers(0, len(data) - 1))
    xor = draw.draw(st.integers(1, 255))
    damaged = bytearray(data)
    damaged[at] ^= xor
    assert crc16(bytes(damaged)) != crc16(data)


def test_crc_has_only_256_values() -> None:
    """Documented weakness: the register's low byte is dropped each step (see crc.py)."""
    values = {crc16(bytes([a, b])) for a in range(256) for b in range(256)}
    assert len(values) == 256


# -- framing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", EXAMPLES)
def test_encode_frame_reproduces_the_reference_packets(frame: bytes) -> None:
    assert encode_frame(segment_of(frame).decode()) == frame
    decoded = decode_frame(frame)
    assert decoded.segment == segment_of(frame).decode()
    assert decoded.crc == int(frame[-6:-2], 16)
    assert decoded.size == len(frame)


segments = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=300
).filter(lambda s: len(s.encode()) <= MAX_SEGMENT)


@given(segments)
def test_encode_decode_round_trip(segment: str) -> None:
    assert decode_frame(encode_frame(segment)).segment == segment


def test_encode_frame_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(ValueError, match="exceeds 1024"):
        encode_frame("x" * 1025)
    with pytest.raises(ValueError, match="CR LF"):
        encode_frame("a\r\nb")
    assert len(encode_frame("é" * 512)) == 1024 + 12  # the length counts bytes


def test_split_over_many_feeds_and_many_in_one_feed() -> None:
    stream = b"".join(EXAMPLES)
    one_by_one = decode_all(*[stream[i : i + 1] for i in range(len(stream))])
    at_once = decode_all(stream)
    assert one_by_one == at_once
    assert [f.segment.encode() for f in at_once if isinstance(f, Frame)] == [
        segment_of(f) for f in EXAMPLES
    ]
    assert [f.offset for f in at_once if isinstance(f, Frame)] == [0, 113, 326, 572]


def test_garbage_before_and_between_is_one_event_per_run() -> None:
    events = decode_all(b"\x00\xffnoise", REALTIME, b"#", b"x\r\n", HOURLY, b"tail#")
    assert reasons(events) == ["garbage", "frame", "garbage", "frame", "garbage"]
    first, _, middle, _, last = events
    assert isinstance(first, FrameError)
    assert first.size == 7
    assert first.sample == b"\x00\xffnoise"
    assert isinstance(middle, FrameError)
    assert middle.size == 4
    assert middle.sample == b"#x\r\n"
    assert isinstance(last, FrameError)
    assert last.size == 5


def test_a_run_of_hashes_before_a_header_is_garbage() -> None:
    assert reasons(decode_all(b"###", REALTIME)) == ["garbage", "frame"]
    assert reasons(decode_all(b"#", b"#", b"#", REALTIME)) == ["garbage", "frame"]


def test_a_segment_may_contain_hashes() -> None:
    events = decode_all(encode_frame(HEAD + "CP=&&Info=##0101##&&"), REALTIME)
    assert reasons(events) == ["frame", "frame"]


def _with_crc(frame: bytes, crc: bytes) -> bytes:
    return frame[:-6] + crc + b"\r\n"


# Each broken input is followed by a good packet: the decoder must report it and resync.
BROKEN = {
    "non-digit length": (b"##01a1" + REALTIME[6:], ["bad_length"]),
    "length says fewer bytes": (b"##0200" + REALTIME[6:], ["bad_length"]),
    "length says more bytes": (b"##0250" + REALTIME[6:], ["bad_length"]),
    "too long": (b"##1025" + REALTIME[6:], ["too_long"]),
    "wrong CRC": (_with_crc(REALTIME, b"7801"), ["bad_crc"]),
    "CRC not hex": (_with_crc(REALTIME, b"78G0"), ["bad_crc"]),
    "damaged terminator": (REALTIME[:-2] + b"\r\r", ["bad_terminator"]),
    "cut short by the next packet": (REALTIME[:150], ["truncated"]),
    "header only": (b"##0201", ["truncated"]),
    "not UTF-8": (
        encode_frame("x" * 5)[:6] + b"\xff" * 5 + b"%04X\r\n" % crc16(b"\xff" * 5),
        ["bad_encoding"],
    ),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_each_error_is_reported_and_the_decoder_resyncs(name: str) -> None:
    broken, expected = BROKEN[name]
    events = decode_all(broken, HOURLY)
    assert reasons(events) == [*expected, "frame"]
    assert isinstance(events[-1], Frame)
    assert events[-1].segment.encode() == segment_of(HOURLY)
    error = events[0]
    assert isinstance(error, FrameError)
    assert error.offset == 0
    assert error.detail
    # byte by byte gives the same events
    assert decode_all(*[bytes([b]) for b in broken + HOURLY]) == events


def test_every_frame_error_reason_is_exercised() -> None:
    seen = {r for _, expected in BROKEN.values() for r in expected} | {"garbage"}
    assert seen == {str(r) for r in FrameErrorReason}


def test_truncated_at_end_of_stream() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(REALTIME[:50]) == []
    [error] = decoder.close()
    assert error.reason is FrameErrorReason.TRUNCATED
    assert error.size == 50


def test_length_counted_in_characters_is_accepted() -> None:
    segment = HEAD + "CP=&&Info=监测站&&"
    data = segment.encode()
    frame = b"##%04d%s%04X\r\n" % (len(segment), data, crc16(data))
    assert len(segment) < len(data)
    [event] = decode_all(frame)
    assert isinstance(event, Frame)
    assert event.segment == segment


def test_long_garbage_is_reported_in_bounded_runs() -> None:
    decoder = FrameDecoder(garbage_report_bytes=100)
    events = decoder.feed(b"x" * 250) + decoder.close()
    assert [e.size for e in events if isinstance(e, FrameError)] == [100, 100, 50]


def test_buffer_stays_bounded_when_no_terminator_comes() -> None:
    decoder = FrameDecoder()
    events = decoder.feed(b"##1000" + b"a" * 5000)
    assert decoder.buffered < MAX_FRAME
    assert reasons(events) == ["bad_terminator"]
    assert isinstance(events[0], FrameError)
    assert events[0].size == MAX_FRAME


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=80), max_size=30))
def test_decoder_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    total = 0
    for chunk in chunks:
        for event in decoder.feed(chunk):
            total += event.size
        assert decoder.buffered < MAX_FRAME
    total += sum(e.size for e in decoder.close())
    assert total == sum(map(len, chunks))  # every byte is accounted for exactly once


hostile = st.lists(
    st.one_of(
        st.sampled_from(EXAMPLES),
        st.sampled_from(EXAMPLES).flatmap(lambda f: st.integers(1, len(f)).map(lambda n: f[:n])),
        st.lists(st.sampled_from([b"#", b"##", b"0", b"1", b"9", b"\r", b"\n", b"A", b"\xff"])).map(
            b"".join
        ),
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=500)
@given(hostile, st.data())
def test_events_do_not_depend_on_chunking(stream: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    events = decode_all(stream)
    assert decode_all(*chunks) == events
    assert sum(e.size for e in events) == len(stream)


garbage_runs = st.binary(min_size=1, max_size=40).filter(lambda g: b"##" not in g)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.one_of(st.none(), garbage_runs), st.sampled_from(EXAMPLES)), max_size=8),
    st.one_of(st.none(), garbage_runs),
    st.data(),
)
def test_valid_packets_survive_any_garbage_and_chunking(
    items: list[tuple[bytes | None, bytes]], trailer: bytes | None, data: st.DataObject
) -> None:
    stream = b""
    expected: list[tuple[str, int]] = []
    for garbage, frame in items:
        if garbage is not None:
            expected.append(("garbage", len(stream)))
            stream += garbage
        expected.append(("frame", len(stream)))
        stream += frame
    if trailer is not None:
        expected.append(("garbage", len(stream)))
        stream += trailer
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    events = decode_all(*chunks)
    assert [(reasons([e])[0], e.offset) for e in events] == expected
    frames = [e.segment.encode() for e in events if isinstance(e, Frame)]
    assert frames == [segment_of(frame) for _, frame in items]


@given(st.sampled_from(EXAMPLES), st.data())
def test_bit_flip_in_the_segment_is_bad_crc(frame: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(6, len(frame) - 7))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(frame)
    damaged[at] ^= 1 << bit
    events = decode_all(bytes(damaged))
    assert isinstance(events[0], FrameError)
    assert events[0].reason is FrameErrorReason.BAD_CRC
    assert not any(isinstance(e, Frame) for e in events)


# -- segment -------------------------------------------------------------------------------------


def test_standard_example_parses() -> None:
    packet = parse_segment(decode_frame(STANDARD_EXAMPLE).segment)
    assert (packet.qn, packet.st, packet.cn, packet.pw) == (
        "20160801085857223",
        "32",
        "1062",
        "100000",
    )
    assert packet.mn == "010000A8900016F000169DC0"
    assert packet.command is Command.SET_RTD_INTERVAL
    assert packet.flag == 5
    assert packet.version == 1
    assert packet.needs_reply
    assert not packet.has_subpackets
    assert packet.pnum is None
    assert dict(packet.cp_fields) == {"RtdInterval": "30"}
    assert packet.data_time is None
    assert not packet.params
    assert packet.qn_time() == datetime(2016, 8, 1, 8, 58, 57, 223000, tzinfo=CHINA_TZ)


def test_realtime_upload_parses() -> None:
    packet = parse_segment(decode_frame(REALTIME).segment)
    assert packet.command is Command.REALTIME_DATA
    assert packet.data_time == datetime(2024, 3, 15, 10, 30, tzinfo=CHINA_TZ)
    assert packet.data_time.astimezone(UTC) == datetime(2024, 3, 15, 2, 30, tzinfo=UTC)
    assert packet.values == [
        ParamValue("w01001", "Rtd", 7.32, "N"),
        ParamValue("w01010", "Rtd", 18.6, "N"),
        ParamValue("w01014", "Rtd", 412.5, "N"),
    ]
    assert all(g.compliance is Compliance.EVALUATE for g in packet.params.values())


def test_hourly_upload_groups_per_code() -> None:
    packet = parse_segment(decode_frame(HOURLY).segment)
    assert list(packet.params) == ["w01003", "w01001"]
    turbidity = packet.params["w01003"]
    assert dict(turbidity.values) == {"Min": 0.12, "Avg": 0.18, "Max": 0.31}
    assert turbidity.flag is DataFlag.NORMAL
    spec = DATA_COMMANDS[Command.HOURLY_DATA]
    assert spec.value_field == "Avg"
    assert spec.data_time_is_start
    assert packet.params["w01001"].values[spec.value_field] == 7.31


def test_data_reply_example_parses() -> None:
    packet = parse_segment(decode_frame(DATA_ACK).segment)
    assert packet.command is Command.DATA_REPLY
    assert packet.st == "91"
    assert packet.flag == 4
    assert not packet.needs_reply
    assert not packet.cp_fields


def test_flags_sample_time_eflag_subpackets_and_empty_values() -> None:
    segment = (
        "QN=20240315103000000;ST=32;CN=2051;PW=123456;MN=AB12;Flag=7;PNUM=3;PNO=2;"
        "CP=&&DataTime=20240315102000;w01001-Avg=,w01001-Flag=D,w01001-EFlag=E7;"
        "w01003-Avg=5000,w01003-Flag=T,w01003-SampleTime=20240315102500,w01003-SN=XYZ;&&"
    )
    packet = parse_segment(segment)
    assert (packet.pnum, packet.pno, packet.has_subpackets) == (3, 2, True)
    ph, turbidity = packet.params["w01001"], packet.params["w01003"]
    assert ph.values["Avg"] is None
    assert ph.eflag == "E7"
    assert ph.compliance is Compliance.EXCLUDE
    assert turbidity.compliance is Compliance.OVER_RANGE
    assert turbidity.sample_time == datetime(2024, 3, 15, 10, 25, tzinfo=CHINA_TZ)
    assert dict(turbidity.extra) == {"SN": "XYZ"}


def test_replies_from_a_station_parse() -> None:
    base = "QN=20240315103000000;ST=91;CN={cn};PW=123456;MN=AB12;Flag=4;CP=&&{cp}&&"
    assert parse_segment(base.format(cn=9011, cp="QnRtn=1")).qn_rtn is QnRtn.READY
    assert parse_segment(base.format(cn=9012, cp="ExeRtn=100")).exe_rtn is ExeRtn.NO_DATA


def test_data_flag_table() -> None:
    assert set(DATA_FLAG_RULES) == set(DataFlag)
    by_treatment = {f.value: r.compliance for f, r in DATA_FLAG_RULES.items()}
    assert by_treatment == {
        "N": Compliance.EVALUATE,
        "T": Compliance.OVER_RANGE,
        **dict.fromkeys("FMSDCB", Compliance.EXCLUDE),
    }
    assert {f.value for f, r in DATA_FLAG_RULES.items() if r.suggested_alert} == {"F", "D", "B"}


def test_data_commands_cover_the_uploads() -> None:
    assert {c.value for c in DATA_COMMANDS} == {"2011", "2051", "2061", "2031"}


SEGMENT_ERRORS = [
    # (segment, reason, field)
    ("QN=20240315103000000;ST=32", SegmentErrorReason.MISSING_FIELD, "CP"),
    (HEAD.replace("PW=123456;", "") + "CP=&&&&", SegmentErrorReason.MISSING_FIELD, "PW"),
    (HEAD + "CP=&&w01001-Rtd=7&&", SegmentErrorReason.MISSING_FIELD, "DataTime"),
    (HEAD.replace("Flag=5", "Flag=7") + "CP=&&&&", SegmentErrorReason.MISSING_FIELD, "PNUM"),
    (HEAD.replace("CN=2011", "CN=9011") + "CP=&&&&", SegmentErrorReason.MISSING_FIELD, "QnRtn"),
    ("QN=20240315103000000;ST32;CP=&&&&", SegmentErrorReason.MALFORMED, None),
    (HEAD + "ST=32;CP=&&&&", SegmentErrorReason.DUPLICATE_FIELD, "ST"),
    (HEAD + "CP=&&w01001-Rtd=7,w01001-Rtd=8&&", SegmentErrorReason.DUPLICATE_FIELD, "w01001-Rtd"),
    (
        HEAD.replace("QN=20240315103000000", "QN=2024") + "CP=&&&&",
        SegmentErrorReason.BAD_FIELD,
        "QN",
    ),
    (
        HEAD.replace("QN=20240315103000000", "QN=20241315103000000") + "CP=&&&&",
        SegmentErrorReason.BAD_FIELD,
        "QN",
    ),
    (HEAD.replace("ST=32", "ST=3") + "CP=&&&&", SegmentErrorReason.BAD_FIELD, "ST"),
    (HEAD.replace("CN=2011", "CN=20x1") + "CP=&&&&", SegmentErrorReason.BAD_FIELD, "CN"),
    (HEAD.replace("PW=123456", "PW=") + "CP=&&&&", SegmentErrorReason.BAD_FIELD, "PW"),
    (
        HEAD.replace("MN=010000A8900016F000169DC0", "MN=0100-00") + "CP=&&&&",
        SegmentErrorReason.BAD_FIELD,
        "MN",
    ),
    (HEAD.replace("Flag=5", "Flag=256") + "CP=&&&&", SegmentErrorReason.BAD_FIELD, "Flag"),
    (HEAD + "PNUM=2;PNO=3;CP=&&&&", SegmentErrorReason.BAD_FIELD, "PNO"),
    (HEAD + "CP=&&DataTime=20240315103000", SegmentErrorReason.MALFORMED_CP, "CP"),
    (HEAD + "CP=DataTime=20240315103000", SegmentErrorReason.MALFORMED_CP, "CP"),
    (HEAD + "CP=&&DataTime=20240315103000;w01001&&", SegmentErrorReason.MALFORMED_CP, None),
    (HEAD + "CP=&&w0 1-Rtd=7&&", SegmentErrorReason.MALFORMED_CP, "w0 1-Rtd"),
    (HEAD + "CP=&&DataTime=2024031510300&&", SegmentErrorReason.BAD_DATATIME, "DataTime"),
    (HEAD + "CP=&&DataTime=20240231103000&&", SegmentErrorReason.BAD_DATATIME, "DataTime"),
    (
        HEAD + "CP=&&DataTime=20240315103000;w01001-Rtd=7,w01001-SampleTime=x&&",
        SegmentErrorReason.BAD_DATATIME,
        "w01001-SampleTime",
    ),
    (HEAD + "CP=&&DataTime=20240315103000;w01001-Rtd=7,2&&", SegmentErrorReason.MALFORMED_CP, None),
    (
        HEAD + "CP=&&DataTime=20240315103000;w01001-Rtd=abc&&",
        SegmentErrorReason.BAD_VALUE,
        "w01001-Rtd",
    ),
    (
        HEAD + "CP=&&DataTime=20240315103000;w01001-Rtd=nan&&",
        SegmentErrorReason.BAD_VALUE,
        "w01001-Rtd",
    ),
    (
        HEAD + "CP=&&DataTime=20240315103000;w01001-Max=1e999&&",
        SegmentErrorReason.BAD_VALUE,
        "w01001-Max",
    ),
    (
        HEAD.replace("CN=2011", "CN=9012") + "CP=&&ExeRtn=7&&",
        SegmentErrorReason.BAD_VALUE,
        "ExeRtn",
    ),
    (
        HEAD + "CP=&&DataTime=20240315103000;w01001-Rtd=7,w01001-Flag=X&&",
        SegmentErrorReason.BAD_DATA_FLAG,
        "w01001-Flag",
    ),
]


@pytest.mark.parametrize(("segment", "reason", "field"), SEGMENT_ERRORS)
def test_segment_errors(segment: str, reason: SegmentErrorReason, field: str | None) -> None:
    with pytest.raises(SegmentError) as caught:
        parse_segment(segment)
    assert caught.value.reason is reason
    assert caught.value.field == field
    if field is not None:
        assert field in str(caught.value)


def test_every_segment_error_reason_is_exercised() -> None:
    assert {reason for _, reason, _ in SEGMENT_ERRORS} == set(SegmentErrorReason)


segment_noise = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                "QN=",
                "20240315103000000",
                "ST=",
                "CN=",
                "2011",
                "PW=",
                "MN=",
                "Flag=",
                "5",
                "7",
                "PNUM=",
                "PNO=",
                "CP=",
                "&&",
                ";",
                ",",
                "=",
                "-",
                "w01001",
                "Rtd",
                "Flag",
                "N",
                "X",
                "DataTime",
                "20240315103000",
                "7.2",
                "nan",
                "",
                "QnRtn",
                "9011",
                "SampleTime",
            ]
        ),
        max_size=40,
    ).map("".join),
    st.sampled_from([segment_of(f).decode() for f in EXAMPLES]).flatmap(
        lambda s: st.tuples(
            st.integers(0, len(s)), st.integers(0, len(s)), st.text(max_size=5)
        ).map(lambda t: s[: t[0]] + t[2] + s[t[1] :])
    ),
)


@settings(max_examples=500)
@given(segment_noise)
def test_parser_raises_only_segment_errors(segment: str) -> None:
    reason: SegmentErrorReason | None = None
    try:
        packet = parse_segment(segment)
    except SegmentError as exc:
        reason = exc.reason
    else:  # whatever is accepted survives a round trip
        assert parse_segment(format_segment(packet)) == packet
    assert reason is None or reason in SegmentErrorReason


def test_unknown_header_fields_and_commands_are_kept() -> None:
    packet = parse_segment(HEAD.replace("CN=2011", "CN=3020") + "Vendor=x;CP=&&i13001-Info=a&&")
    assert packet.command is Command.SITE_INFO
    assert packet.data_time is None  # no numbers
    assert dict(packet.extra) == {"Vendor": "x"}
    assert packet.params["i13001"].extra == {"Info": "a"}
    assert parse_segment(HEAD.replace("CN=2011", "CN=2999") + "CP=&&&&").command is None


def _packets() -> st.SearchStrategy[Packet]:
    numbers = st.one_of(st.none(), st.integers(-(10**9), 10**9).map(lambda i: i / 1000))
    group_fields = st.dictionaries(
        st.sampled_from(["Rtd", "Min", "Avg", "Max", "Cou", "ZsAvg"]), numbers, min_size=1
    )
    groups = st.dictionaries(
        st.sampled_from(["w01001", "w01003", "w01010", "w01014", "wj0001", "a34004"]),
        st.tuples(group_fields, st.one_of(st.none(), st.sampled_from(list(DataFlag)))),
        max_size=4,
    )
    moments = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
        lambda d: d.replace(microsecond=0, tzinfo=CHINA_TZ)
    )

    def build(
        qn_time: datetime,
        cn: str,
        flag: int,
        data_time: datetime,
        raw: dict[str, tuple[dict[str, float | None], DataFlag | None]],
    ) -> Packet:
        params = {c: ParamGroup(c, v, f) for c, (v, f) in raw.items()}
        return Packet(
            qn=qn_time.strftime("%Y%m%d%H%M%S") + f"{qn_time.microsecond // 1000:03d}",
            st="32",
            cn=cn,
            pw="123456",
            mn="010000A8900016F000169DC0",
            flag=flag,
            data_time=data_time,
            params=params,
        )

    return st.builds(
        build,
        st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)),
        st.sampled_from(["2011", "2051", "2061", "2031"]),
        st.sampled_from([4, 5]),
        moments,
        groups,
    )


@given(_packets())
def test_packet_round_trip_through_a_frame(packet: Packet) -> None:
    frame = encode_frame(format_segment(packet))
    assert parse_segment(decode_frame(frame).segment) == packet


# -- replies -------------------------------------------------------------------------------------


def test_data_reply_matches_the_reference_ack() -> None:
    upload = parse_segment(decode_frame(REALTIME).segment)
    assert data_reply(upload) == DATA_ACK
    assert reply_for(upload) == DATA_ACK


def test_reply_for_follows_flag_and_command() -> None:
    no_ack = parse_segment(HEAD.replace("Flag=5", "Flag=4") + "CP=&&&&")
    assert reply_for(no_ack) is None
    reply = parse_segment(decode_frame(DATA_ACK).segment.replace("Flag=4", "Flag=5"))
    assert reply_for(reply) is None  # replies are never acknowledged
    notice = parse_segment(HEAD.replace("CN=2011", "CN=1013") + "CP=&&&&")
    assert reply_for(notice) == notification_reply(notice)
    answer = parse_segment(decode_frame(notification_reply(notice)).segment)
    assert (answer.cn, answer.st, answer.flag, answer.qn) == ("9013", "91", 4, notice.qn)


@pytest.mark.parametrize(
    ("build", "cn", "field", "code"),
    [
        (lambda p: request_reply(p, QnRtn.CRC_ERROR), "9011", "QnRtn", "9"),
        (lambda p: execution_result(p, ExeRtn.SUCCESS), "9012", "ExeRtn", "1"),
    ],
)
def test_station_replies(build: Callable[[Packet], bytes], cn: str, field: str, code: str) -> None:
    command = parse_segment(decode_frame(STANDARD_EXAMPLE).segment)
    frame = build(command)
    assert frame == encode_frame(
        f"QN={command.qn};ST=91;CN={cn};PW=100000;MN={command.mn};Flag=4;CP=&&{field}={code}&&"
    )
    assert parse_segment(decode_frame(frame).segment).cp_fields[field] == code


# -- code map ------------------------------------------------------------------------------------


def test_default_code_map() -> None:
    codes = load_code_map()
    assert codes.quantity("w01001") == "ph"
    assert codes.quantity("w01003") == "turbidity_ntu"
    assert codes.quantity("w01010") == "water_temperature_c"
    assert codes.quantity("w01014") == "conductivity_us_cm"
    assert codes["w01014"].to_canonical(412.5) == 412.5
    assert codes["wj0001"].quantity == "free_chlorine_mg_l"
    assert codes["wj0001"].private
    assert codes["wj0002"].quantity == "total_chlorine_mg_l"
    assert codes["wj0002"].private
    assert not codes["w01001"].private
    assert codes.quantity("a34004") is None  # unit unsettled: not mapped by default


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "codes.yaml"
    path.write_text(body, encoding="utf-8")
    return path


ENTRY = "{{name: n, quantity: {q}, unit: '{u}', source: s, confidence: C{extra}}}"


def test_code_map_conversion(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "codes:\n  w01014: "
        + ENTRY.format(q="conductivity_us_cm", u="mS/m", extra=", scale: 10")
        + "\n",
    )
    assert load_code_map(path)["w01014"].to_canonical(41.25) == 412.5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "codes:\n  w01099: " + ENTRY.format(q="chlorine_ppm", u="mg/L", extra="") + "\n",
            "code 'w01099': unknown quantity 'chlorine_ppm'",
        ),
        (
            "codes:\n  w01014: " + ENTRY.format(q="conductivity_us_cm", u="mS/m", extra="") + "\n",
            "code 'w01014': unit 'mS/m' differs",
        ),
        (
            "codes:\n  a: "
            + ENTRY.format(q="ph", u="1", extra="")
            + "\n  b: "
            + ENTRY.format(q="ph", u="1", extra="")
            + "\n",
            "code 'b': quantity 'ph' is already",
        ),
        ("codes:\n  x: " + ENTRY.format(q="cycle_id", u="1", extra="") + "\n", "not numeric"),
        ("codes:\n  w-1: " + ENTRY.format(q="ph", u="1", extra="") + "\n", "letters or digits"),
        ("codes:\n  x: " + ENTRY.format(q="ph", u="1", extra=", colour: red") + "\n", "colour"),
        ("codes: [", "cannot read"),
    ],
)
def test_code_map_errors_name_file_and_code(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(CodeMapError) as caught:
        load_code_map(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


# -- dependencies ----------------------------------------------------------------------------------


def test_codec_imports_nothing_outside_protocols() -> None:
    code = (
        "import sys, protocols.hj212\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'collectors', 'gateway', 'alerting', 'simulators', 'weijian'}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
