"""Device profiles: shipped ones load and decode registers; bad files say what is wrong."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from protocols.catalog import default_catalog
from protocols.profiles import (
    PROFILES_DIR,
    Profile,
    ProfileError,
    ProfileSet,
    load_profile,
    load_profiles,
)

SHIPPED = {
    "water_probe_wq500",
    "pool_monitor_pm300",
    "sterilizer_ps120",
    "dose_rate_monitor_gr10",
    "dosimeter_reader_dr20",
    "air_monitor_iaq8",
    "water_station_ws900",
}


def serve(profile: Profile, values: dict[str, float]) -> list[list[int]]:
    """The responses a device holding ``values`` gives to the profile's read plan."""
    store = profile.encode_registers(values)
    return [
        [store[r.function].get(a, 0) for a in range(r.start, r.start + r.count)]
        for r in profile.read_plan
    ]


# --- the shipped profiles --------------------------------------------------------------------


def test_every_shipped_profile_loads() -> None:
    profiles = load_profiles()
    assert set(profiles) == SHIPPED
    assert {p.stem for p in PROFILES_DIR.glob("*.yaml")} == SHIPPED
    assert all(p.reference for p in profiles.values()), "invented models must say so"


def test_every_device_kind_has_a_profile() -> None:
    kinds = {p.kind for p in load_profiles().values()}
    assert kinds == set(default_catalog().kinds)


def test_default_set_is_loaded_once() -> None:
    assert load_profiles() is load_profiles()


def test_profile_set_lookup() -> None:
    profiles = load_profiles()
    assert isinstance(profiles, ProfileSet)
    assert profiles.get("water_probe_wq500") is profiles["water_probe_wq500"]
    assert profiles.get("nope") is None
    with pytest.raises(KeyError, match="no device profile 'nope'; known: air_monitor_iaq8"):
        profiles["nope"]
    assert [p.id for p in profiles.for_kind("pool_monitor")] == ["pool_monitor_pm300"]


def test_water_probe_is_read_in_one_request_and_decodes() -> None:
    probe = load_profiles()["water_probe_wq500"]
    assert [(r.function, r.start, r.count) for r in probe.read_plan] == [(4, 0, 10)]
    # A register dump as the probe sends it: turbidity 0.35 NTU as float32 CDAB, pH 7.21 as
    # uint16 × 0.01, temperature -1.5 °C as int16 × 0.1, conductivity 412.5 µS/cm as CDAB.
    dump = [0x3333, 0x3EB3, 45, 721, 0xFFF1, 0, 0, 0, 0x4000, 0x43CE]
    assert probe.decode_registers([dump]) == {
        "turbidity_ntu": 0.35,
        "free_chlorine_mg_l": 0.45,
        "ph": 7.21,
        "water_temperature_c": -1.5,
        "conductivity_us_cm": 412.5,
    }


@pytest.mark.parametrize("profile_id", ["water_probe_wq500", "pool_monitor_pm300"])
def test_modbus_profile_round_trips_values_at_the_instrument_limits(profile_id: str) -> None:
    profile = load_profiles()[profile_id]
    for end in (0, 1):
        values = {name: q.range[end] for name, q in profile.quantities.items()}  # type: ignore[index]
        assert profile.decode_registers(serve(profile, values)) == values


def test_failed_request_drops_only_its_quantities() -> None:
    probe = load_profiles()["water_probe_wq500"]
    assert probe.decode_registers([None]) == {}
    with pytest.raises(ValueError, match="2 responses for 1 requests"):
        probe.decode_registers([None, None])


def test_register_defaults_come_from_the_modbus_section() -> None:
    pool = load_profiles()["pool_monitor_pm300"]
    field = pool.register_fields["turbidity_ntu"]
    assert (field.byte_order, field.word_order) == ("big", "big")
    assert pool.register_fields["water_temperature_c"].offset == -40


# --- bad profiles ----------------------------------------------------------------------------

BASE = yaml.safe_load((PROFILES_DIR / "water_probe_wq500.yaml").read_text(encoding="utf-8"))


def write(tmp_path: Path, data: Any, name: str = "water_probe_wq500") -> Path:
    path = tmp_path / f"{name}.yaml"
    text = (
        data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    )
    path.write_text(text, encoding="utf-8")
    return path


def edit(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def mqtt_only(d: dict[str, Any]) -> None:
    d["protocols"] = ["mqtt"]
    del d["modbus"]


def hj212_only(d: dict[str, Any]) -> None:
    mqtt_only(d)
    del d["registers"]
    d["protocols"] = ["hj212"]


def sterilizer_with_unit(d: dict[str, Any]) -> None:
    hj212_only(d)
    d.update(kind="sterilizer", protocols=["mqtt"], quantities={"cycle_phase": {"unit": "s"}})


BAD: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    (
        "dtype not in the enum",
        lambda d: d["registers"]["turbidity_ntu"].update(dtype="float33"),
        "registers.turbidity_ntu.dtype: 'float33' is not one of int16, uint16, int32, uint32, "
        "float32, float64",
    ),
    (
        "function not 3 or 4",
        lambda d: d["registers"]["ph"].update(function=6),
        "registers.ph.function: 6 is not one of 3, 4",
    ),
    (
        "word order misspelt",
        lambda d: d["registers"]["ph"].update(word_order="swapped"),
        "registers.ph.word_order: 'swapped' is not one of big, little",
    ),
    (
        "unknown register key",
        lambda d: d["registers"]["ph"].update(adress=3),
        "registers.ph.adress: unknown key (did you mean 'address'?); allowed: address, function",
    ),
    (
        "unknown top-level key",
        lambda d: d.update(intervall_s=60),
        "intervall_s: unknown key (did you mean 'interval_s'?)",
    ),
    (
        "unknown key in modbus.serial",
        lambda d: d["modbus"]["serial"].update(baud=9600),
        "modbus.serial.baud: unknown key (did you mean 'baudrate'?)",
    ),
    ("required key missing", lambda d: d.pop("interval_s"), "interval_s: required"),
    (
        "interval not positive",
        lambda d: d.update(interval_s=0),
        "interval_s: input should be greater than 0, got 0",
    ),
    (
        "unknown kind",
        lambda d: d.update(kind="water_prob"),
        "kind: 'water_prob' is not a device kind; known: air_monitor",
    ),
    (
        "protocol unknown",
        lambda d: d.update(protocols=["modbus_tcp", "bacnet"]),
        "protocols.1: 'bacnet' is not one of modbus_tcp, modbus_rtu_tcp, modbus_rtu, mqtt, coap, "
        "http, hj212",
    ),
    (
        "protocol twice",
        lambda d: d.update(protocols=["modbus_tcp", "modbus_tcp"]),
        "protocols: 'modbus_tcp' is listed twice",
    ),
    (
        "quantity not in the catalog",
        lambda d: d["quantities"].update(turbidity={"unit": "NTU", "range": [0, 1]}),
        "quantities.turbidity: not a canonical quantity (did you mean 'turbidity_ntu'?)",
    ),
    (
        "quantity of another kind",
        lambda d: d["quantities"].update(co2_ppm={"unit": "ppm", "range": [0, 1], "resolution": 1}),
        "quantities.co2_ppm: not measured by kind 'water_probe'",
    ),
    (
        "unit differs from the catalog",
        lambda d: d["quantities"]["turbidity_ntu"].update(unit="FNU"),
        "quantities.turbidity_ntu.unit: 'FNU' is not the catalog's unit 'NTU'",
    ),
    (
        "range below the physical minimum",
        lambda d: d["quantities"]["turbidity_ntu"].update(range=[-3, 100]),
        "quantities.turbidity_ntu.range: [-3.0, 100.0] exceeds the physical range "
        "[0.0, 4000.0] NTU of turbidity_ntu",
    ),
    (
        "range reversed",
        lambda d: d["quantities"]["ph"].update(range=[14, 0]),
        "quantities.ph.range: [14.0, 0.0] must be finite with min < max",
    ),
    (
        "range missing",
        lambda d: d["quantities"]["ph"].pop("range"),
        "quantities.ph.range: required",
    ),
    (
        "resolution not positive",
        lambda d: d["quantities"]["ph"].update(resolution=0),
        "quantities.ph.resolution: input should be greater than 0",
    ),
    (
        "register for a quantity the profile lacks",
        lambda d: d["registers"].update(orp_mv={"address": 20, "function": 4, "dtype": "int16"}),
        "registers.orp_mv: not one of the profile's quantities",
    ),
    (
        "quantity without a register",
        lambda d: d["registers"].pop("ph"),
        "quantities.ph: has no entry in registers, so is never read",
    ),
    (
        "overlapping registers",
        lambda d: d["registers"]["ph"].update(address=1),
        "registers.ph.address: registers 1..1 (function 4) overlap turbidity_ntu",
    ),
    (
        "zero scale",
        lambda d: d["registers"]["ph"].update(scale=0),
        "registers.ph.scale: 0.0 must be finite and non-zero",
    ),
    (
        "address above 65535",
        lambda d: d["registers"]["ph"].update(address=70000),
        "registers.ph.address: input should be less than or equal to 65535, got 70000",
    ),
    (
        "value runs past the last register",
        lambda d: d["registers"]["turbidity_ntu"].update(address=65535),
        "registers.turbidity_ntu.address: float32 at 65535 ends past 65535",
    ),
    (
        "integer register too small for the range",
        lambda d: d["registers"]["conductivity_us_cm"].update(dtype="int16", scale=0.1),
        "registers.conductivity_us_cm.dtype: int16 × 0.1 + 0 expresses only [-3276.8, 3276.7], "
        "not the range [0, 5000]",
    ),
    (
        "resolution finer than the register step",
        lambda d: d["quantities"]["ph"].update(resolution=0.001),
        "registers.ph.scale: steps of 0.01 cannot carry the resolution 0.001",
    ),
    (
        "register too long for the device's request limit",
        lambda d: d["modbus"].update(max_registers_per_request=1),
        "registers.turbidity_ntu.dtype: float32 takes 2 registers, more than "
        "modbus.max_registers_per_request 1",
    ),
    (
        "modbus profile without registers",
        lambda d: d.pop("registers"),
        "registers: a Modbus profile needs a register map",
    ),
    (
        "register map on an MQTT profile",
        mqtt_only,
        "registers: only a Modbus profile (modbus_tcp, modbus_rtu_tcp, modbus_rtu) has this "
        "section",
    ),
    (
        "hj212 profile without codes",
        hj212_only,
        "hj212: an hj212 profile needs hj212.codes",
    ),
    (
        "text quantity with a unit",
        sterilizer_with_unit,
        "quantities.cycle_phase.unit: a str quantity has no unit",
    ),
    (
        "id differs from the file name",
        lambda d: d.update(id="water_probe_wq501"),
        "id: 'water_probe_wq501' must match the file name 'water_probe_wq500'",
    ),
]


@pytest.mark.parametrize(("case", "change", "expected"), BAD, ids=[c[0] for c in BAD])
def test_bad_profile_names_the_file_the_field_and_why(
    tmp_path: Path, case: str, change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    path = write(tmp_path, edit(change))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, f"{case}: {message}"


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    def two_problems(d: dict[str, Any]) -> None:
        d["quantities"]["ph"]["unit"] = "pH"
        d["registers"]["turbidity_ntu"]["scale"] = 0

    with pytest.raises(ProfileError) as info:
        load_profile(write(tmp_path, edit(two_problems)))
    assert [path for path, _ in info.value.problems] == [
        "quantities.ph.unit",
        "registers.turbidity_ntu.scale",
    ]


def test_hj212_codes_must_cover_the_quantities_once(tmp_path: Path) -> None:
    station = yaml.safe_load((PROFILES_DIR / "water_station_ws900.yaml").read_text("utf-8"))
    station["hj212"]["codes"]["ph"] = "w01010"
    del station["hj212"]["codes"]["turbidity_ntu"]
    with pytest.raises(ProfileError) as info:
        load_profile(write(tmp_path, station, "water_station_ws900"))
    assert "quantities.turbidity_ntu: has no HJ 212 factor code" in str(info.value)
    assert "code 'w01010' is already ph's" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id: [unclosed", "cannot read"),
        ("- a list\n- not a mapping\n", "a profile must be a mapping"),
        ("", "a profile must be a mapping"),
    ],
)
def test_unreadable_file_is_named(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError, match=f"^{re.escape(str(path))}: {expected}"):
        load_profile(path)


def test_path_is_shown_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "profiles").mkdir()
    write(tmp_path / "profiles", edit(lambda d: d["registers"]["ph"].update(dtype="float33")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProfileError) as info:
        load_profiles(Path("profiles"))
    assert str(info.value).startswith(
        "profiles/water_probe_wq500.yaml: registers.ph.dtype: 'float33' is not one of int16"
    )


def test_directory_of_good_profiles_loads(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    profiles = load_profiles(tmp_path)
    assert list(profiles) == ["water_probe_wq500"]
    assert profiles is not load_profiles()
