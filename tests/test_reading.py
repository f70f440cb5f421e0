"""Validation at the door: each kind of bad input is refused with its own reason."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime

import pytest

from protocols.catalog import Catalog, CatalogError, default_catalog
from protocols.directory import DeviceInfo, StaticDirectory
from protocols.mqtt_telemetry import MAX_READINGS, decode_payload, parse_topic, telemetry_filter
from protocols.reading import Reading, ReadingValidator, Reason, Rejection

NOW_S = 1_800_000_000.0
NOW_MS = int(NOW_S * 1000)
AIR = DeviceInfo("air-001", "hotel-group", "hotel-a", "air_monitor", "110105")


@pytest.fixture
def validator() -> ReadingValidator:
    return ReadingValidator(
        default_catalog(), max_past_s=86400, max_future_s=300, clock=lambda: NOW_S
    )


def reason_of(validator: ReadingValidator, raw: object) -> Reason:
    with pytest.raises(Rejection) as err:
        validator.validate(AIR, raw)
    return err.value.reason


def test_a_good_reading_becomes_a_typed_reading(validator: ReadingValidator) -> None:
    reading = validator.validate(
        AIR, {"ts": "2027-01-15T08:00:00+08:00", "fields": {"co2_ppm": 612, "humidity_pct": 48.5}}
    )
    expected_ms = int(datetime(2027, 1, 15, 0, tzinfo=UTC).timestamp() * 1000)
    assert reading == Reading(
        "hotel-group",
        "hotel-a",
        "air-001",
        "air_monitor",
        "110105",
        expected_ms,
        {"co2_ppm": 612.0, "humidity_pct": 48.5},
    )
    assert isinstance(reading.fields["co2_ppm"], float), "ints must become floats: one field type"


def test_epoch_seconds_and_missing_ts(validator: ReadingValidator) -> None:
    assert (
        validator.validate(AIR, {"ts": NOW_S - 10.5, "fields": {"co2_ppm": 1}}).time_ms
        == NOW_MS - 10500
    )
    assert validator.validate(AIR, {"fields": {"co2_ppm": 1}}).time_ms == NOW_MS


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([1, 2], Reason.MALFORMED),
        ({"fields": {}}, Reason.NO_FIELDS),
        ({"fields": [1]}, Reason.NO_FIELDS),
        ({"fields": {"co2_ppm": "612"}}, Reason.WRONG_TYPE),
        ({"fields": {"co2_ppm": True}}, Reason.WRONG_TYPE),
        ({"fields": {"co2_ppm": None}}, Reason.WRONG_TYPE),
        ({"fields": {"co2_ppm": math.nan}}, Reason.NON_FINITE),
        ({"fields": {"co2_ppm": math.inf}}, Reason.NON_FINITE),
        ({"fields": {"co2_ppm": -5}}, Reason.OUT_OF_RANGE),
        ({"fields": {"humidity_pct": 140}}, Reason.OUT_OF_RANGE),
        ({"fields": {"turbidity_ntu": 0.2}}, Reason.UNKNOWN_QUANTITY),  # not an air quantity
        ({"fields": {"co2": 600}}, Reason.UNKNOWN_QUANTITY),
        ({"fields": {"co2_ppm": 1}, "ts": "yesterday"}, Reason.BAD_TIMESTAMP),
        (
            {"fields": {"co2_ppm": 1}, "ts": "2027-01-15T08:00:00"},
            Reason.BAD_TIMESTAMP,
        ),  # no offset
        ({"fields": {"co2_ppm": 1}, "ts": True}, Reason.BAD_TIMESTAMP),
        ({"fields": {"co2_ppm": 1}, "ts": math.nan}, Reason.BAD_TIMESTAMP),
        ({"fields": {"co2_ppm": 1}, "ts": 0}, Reason.TIMESTAMP_OUT_OF_WINDOW),
        ({"fields": {"co2_ppm": 1}, "ts": "2100-01-01T00:00:00Z"}, Reason.TIMESTAMP_OUT_OF_WINDOW),
        ({"fields": {"co2_ppm": 1}, "ts": NOW_S + 301}, Reason.TIMESTAMP_OUT_OF_WINDOW),
        ({"fields": {"co2_ppm": 1}, "ts": NOW_S - 86401}, Reason.TIMESTAMP_OUT_OF_WINDOW),
        ({"fields": {"co2_ppm": 1}, "device": "air-002"}, Reason.IDENTITY_MISMATCH),
        ({"fields": {"co2_ppm": 1}, "flags": {"co2_ppm": "X"}}, Reason.BAD_FLAG),
        ({"fields": {"co2_ppm": 1}, "flags": {"pm25_ug_m3": "N"}}, Reason.BAD_FLAG),
    ],
)
def test_bad_readings_are_refused_with_their_reason(
    validator: ReadingValidator, raw: object, reason: Reason
) -> None:
    assert reason_of(validator, raw) == reason


def test_window_edges_are_inclusive(validator: ReadingValidator) -> None:
    assert validator.validate(AIR, {"ts": NOW_S + 300, "fields": {"co2_ppm": 1}})
    assert validator.validate(AIR, {"ts": NOW_S - 86400, "fields": {"co2_ppm": 1}})


def test_flags_are_stored_as_string_fields(validator: ReadingValidator) -> None:
    reading = validator.validate(
        AIR, {"ts": NOW_S, "fields": {"co2_ppm": 700}, "flags": {"co2_ppm": "C"}}
    )
    assert reading.to_line() == (
        "air_monitor,device=air-001,region=110105,site=hotel-a,tenant=hotel-group "
        f'co2_ppm=700.0,co2_ppm_flag="C" {NOW_MS}'
    )


def test_topic_parsing_names_the_identity_and_refuses_the_rest() -> None:
    ident = parse_topic("weijian/v1", "weijian/v1/t1/s-1/dev.01/telemetry")
    assert (ident.tenant, ident.site, ident.device) == ("t1", "s-1", "dev.01")
    for topic in (
        "weijian/v2/t/s/d/telemetry",
        "weijian/v1/t/s/telemetry",
        "weijian/v1/t/s/d/status",
    ):
        with pytest.raises(Rejection) as err:
            parse_topic("weijian/v1", topic)
        assert err.value.reason == Reason.MALFORMED
    with pytest.raises(Rejection) as err:
        parse_topic("weijian/v1", "weijian/v1/t/s/-bad/telemetry")
    assert err.value.reason == Reason.BAD_IDENTIFIER
    assert telemetry_filter("weijian/v1", "g") == "$share/g/weijian/v1/+/+/+/telemetry"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", Reason.MALFORMED),
        (b"[1,2]", Reason.MALFORMED),
        (b'"text"', Reason.MALFORMED),
        (b'{"readings": []}', Reason.MALFORMED),
        (b'{"readings": {"a": 1}}', Reason.MALFORMED),
        (b"\xff\xfe", Reason.MALFORMED),
        (
            b'{"readings": [' + b",".join([b"{}"] * (MAX_READINGS + 1)) + b"]}",
            Reason.TOO_MANY_READINGS,
        ),
    ],
)
def test_payload_decoding_refuses_what_is_not_the_documented_shape(
    payload: bytes, reason: Reason
) -> None:
    with pytest.raises(Rejection) as err:
        decode_payload(payload)
    assert err.value.reason == reason


def test_payload_decoding_accepts_one_reading_or_a_batch() -> None:
    assert decode_payload(b'{"fields": {"co2_ppm": 1}}') == [{"fields": {"co2_ppm": 1}}]
    assert len(decode_payload(b'{"readings": [{"fields": {}}, {"fields": {}}]}')) == 2


def test_catalog_errors_name_the_file_and_the_entry(tmp_path) -> None:
    q = tmp_path / "q.yaml"
    k = tmp_path / "k.yaml"
    q.write_text("quantities:\n  co2_ppm: {unit: ppm, description: CO2, range: [10, 0]}\n")
    k.write_text("kinds:\n  air: {description: air, quantities: [co2_ppm]}\n")
    with pytest.raises(CatalogError, match=r"q\.yaml: quantities\.co2_ppm.*reversed"):
        Catalog.load(q, k)
    q.write_text("quantities:\n  co2_ppm: {unit: ppm, description: CO2}\n")
    k.write_text("kinds:\n  air: {description: air, quantities: [co2_ppm, pm25]}\n")
    with pytest.raises(
        CatalogError, match=r"k\.yaml: kind 'air' lists unknown quantities \['pm25'\]"
    ):
        Catalog.load(q, k)


def test_every_kind_uses_only_defined_quantities_and_numeric_ones_have_units() -> None:
    catalog = default_catalog()
    for kind in catalog.kinds.values():
        assert kind.quantities <= catalog.quantities.keys()
    for q in catalog.quantities.values():
        assert q.type in ("str", "bool") or q.unit, q.name


def test_static_directory_reloads_its_file_when_it_changes(tmp_path) -> None:
    path = tmp_path / "devices.yaml"
    directory = StaticDirectory([AIR])
    directory.save(path)
    loaded = StaticDirectory(path=path)
    assert loaded.get("air-001") == AIR
    assert loaded.refresh() is False
    directory.add(DeviceInfo("air-002", "t", "s", "air_monitor"))
    directory.save(path)
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert loaded.refresh() is True
    assert loaded.get("air-002") is not None
