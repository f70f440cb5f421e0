"""Scenarios: who owns which sites, where they are, which simulated devices they hold, and which
faults strike when — as data (docs/scenarios.md describes every field).

A scenario file (YAML) is validated into frozen pydantic models before anything connects, and an
error names the file, the entry and the field. Groups (``count: 2000, id: "probe-{n:05d}"``) let
one line declare thousands of sites or devices; they are expanded at load time, so
``scenario.sites`` and ``scenario.devices`` are the individual entries. From a scenario come:

* ``scenario.plan(start)``: every device as a :class:`SimDevice` — its signal model, its faults
  resolved to absolute windows, and ``emit(t)``, what goes on the wire (``simulators/faults.py``);
* ``build_devices`` / ``build_fleet``: the MQTT devices as ``SimulatedMqttDevice`` declarations and
  their fleet, given a ``credentials(device, tenant, site)`` callable that returns the device's
  broker account (``LocalMosquitto.allow_device`` has exactly that shape);
* ``directory_entries``: rows ``{device, tenant, site, kind, region}`` for the platform's device
  directory, and ``site_entries`` for maps.

Simulated kinds are a registry (``SIMULATED_KINDS``): a kind names how to validate a device's
``params``, how to build its signal, its default profile and protocol, and its fault hooks.

Run a scenario against a broker whose device accounts exist already (MQTT devices only)::

    python -m simulators.scenario demo --port 1883 --accounts .weijian/mosquitto/accounts
    python -m simulators.scenario demo --directory      # print the directory rows as YAML

``weijian simulate`` (``simulators/cli.py``) onboards through the gateway and drives every protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from protocols.profiles import load_profiles
from simulators.air_monitor.signal import QUANTITIES as AIR_QUANTITIES
from simulators.air_monitor.signal import AirMonitorSignal, AirMonitorSpec, VenueType
from simulators.faults import (
    Duration,
    Emission,
    FaultConfig,
    FaultedSignal,
    KindInfo,
    Malformed,
    PlannedFault,
    parse_duration,
    parse_instant,
    plan_faults,
    protocol_problem,
    stable_seed,
)
from simulators.mqtt_device import MqttFleet, SimulatedMqttDevice
from simulators.radiation.signal import (
    DOSIMETER_QUANTITIES,
    MONITOR_QUANTITIES,
    DoseRateMonitorSignal,
    DoseRateMonitorSpec,
    PersonalDosimeterSignal,
    PersonalDosimeterSpec,
    RadiationFaults,
)
from simulators.sterilizer.signal import QUANTITIES as STERILIZER_QUANTITIES
from simulators.sterilizer.signal import SterilizerFaults, SterilizerSignal, SterilizerSpec
from simulators.water.signal import (
    POOL_QUANTITIES,
    PROBE_QUANTITIES,
    STATION_QUANTITIES,
    PoolFaults,
    PoolSignal,
    PoolSpec,
    WaterProbeFaults,
    WaterProbeSignal,
    WaterProbeSpec,
    WaterStationSignal,
)

log = logging.getLogger(__name__)

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
VENUES_FILE = Path(__file__).resolve().parent.parent / "protocols" / "data" / "venues.yaml"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # one MQTT topic level, an InfluxDB tag
_REGION = re.compile(r"^[1-8]\d{5}$")  # GB/T 2260 county-level code: province 11..82
_GLOB = re.compile(r"[*?\[]")
MAX_GROUP = 100_000


class ScenarioError(ValueError):
    """A scenario file is missing, not YAML, or does not validate; the message names the file."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def registry_venue_types() -> frozenset[str]:
    """The registry's venue types (protocols/data/venues.yaml): a site's ``venue_type``."""
    return frozenset(yaml.safe_load(VENUES_FILE.read_text(encoding="utf-8"))["venue_types"])


_VENUE_TYPES = registry_venue_types()

# Air-monitor venues (signal model) → the registry's venue types.
AIR_VENUE_TYPES: dict[str, str] = {
    "hotel_room": "hotel",
    "office": "public_place",
    "mall": "public_place",
    "gym": "public_place",
    "classroom": "public_place",
}
# A site without a venue type takes its first device's kind's.
KIND_VENUE_TYPES: dict[str, str] = {
    "water_probe": "tap",
    "water_station": "water_plant_outlet",
    "pool_monitor": "pool",
    "sterilizer": "cssd",
    "dose_rate_monitor": "xray_room",
    "dosimeter": "xray_room",
    "air_monitor": "public_place",
}
# Registry venue type → the water probe's sampling point (WaterProbeSpec.site).
WATER_SITES: dict[str, str] = {
    "water_plant_outlet": "plant_outlet",
    "tap": "tap",
    "secondary_supply": "secondary_supply",
}


class TenantConfig(_Frozen):
    id: str = Field(pattern=_ID.pattern)
    name: str
    category: str | None = Field(default=None, description="Registry category, e.g. hospital")


class SiteConfig(_Frozen):
    """One site. ``venue_type`` is the registry's (venues.yaml); ``venue`` the air-monitor model's
    room type, which also implies a venue type when ``venue_type`` is not given."""

    id: str = Field(pattern=_ID.pattern)
    tenant: str
    name: str
    region: str = Field(description="6-digit administrative division code, e.g. 110105")
    venue: VenueType | None = None
    venue_type: str | None = None
    address: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict, description="Rule context")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)

    @field_validator("region", mode="before")
    @classmethod
    def _region_code(cls, value: Any) -> str:
        text = str(value)
        if not _REGION.match(text):
            raise ValueError(f"{value!r} is not a 6-digit administrative division code")
        return text

    @field_validator("venue_type")
    @classmethod
    def _known_venue_type(cls, value: str | None) -> str | None:
        if value is not None and value not in _VENUE_TYPES:
            raise ValueError(
                f"{value!r} is not a venue type ({', '.join(sorted(_VENUE_TYPES))}; "
                "protocols/data/venues.yaml)"
            )
        return value


class DeviceConfig(_Frozen):
    id: str = Field(pattern=_ID.pattern)
    kind: str
    site: str
    interval_s: float | None = Field(default=None, gt=0, description="Default: the profile's")
    seed: int | None = Field(default=None, description="Default: derived from scenario seed + id")
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's signal spec")
    protocol: str | None = Field(default=None, description="Default: the kind's")
    profile: str | None = Field(default=None, description="Default: the kind's")


class SiteGroup(BaseModel):
    """A ``sites:`` entry: one site, or ``count`` of them from templates (``{n}`` = 1..count)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    id: str
    count: int | None = Field(default=None, ge=1, le=MAX_GROUP)
    spread_deg: float = Field(default=0.02, ge=0, le=5, description="Group: lat/lon scatter")


class DeviceGroup(BaseModel):
    """A ``devices:`` entry: one device, or ``count`` of them (``{n}`` = 1..count in ``id``; a
    ``site`` glob deals them round-robin over the matching sites)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    id: str
    count: int | None = Field(default=None, ge=1, le=MAX_GROUP)


@dataclass(frozen=True)
class SignalContext:
    """What a kind may use besides its spec to build a signal."""

    scenario_seed: int
    site: SiteConfig
    device: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class SimulatedKind:
    """How a device kind is simulated: validate its params, build its signal; its default
    profile and protocol (the registry's), what it emits, and its model fault hooks."""

    make_spec: Callable[[Mapping[str, Any], SiteConfig], Any]
    make_signal: Callable[[Any, int, SignalContext], Any]
    profile: str  # the device profile it is onboarded with (protocols/data/profiles/)
    protocol: str
    quantities: tuple[str, ...] = ()
    fault_model: type[BaseModel] | None = None

    def info(self, name: str) -> KindInfo:
        return KindInfo(name, self.quantities, self.fault_model)


def _air_monitor_spec(params: Mapping[str, Any], site: SiteConfig) -> AirMonitorSpec:
    data = dict(params)
    if site.venue is not None:
        data.setdefault("venue", site.venue)
    elif site.venue_type == "hotel":
        data.setdefault("venue", "hotel_room")
    elif site.venue_type is not None:
        data.setdefault("venue", "office")
    return AirMonitorSpec.model_validate(data)


def _water_spec(default_site: str) -> Callable[[Mapping[str, Any], SiteConfig], WaterProbeSpec]:
    def make(params: Mapping[str, Any], site: SiteConfig) -> WaterProbeSpec:
        data = dict(params)
        data.setdefault("site", WATER_SITES.get(site.venue_type or "", default_site))
        return WaterProbeSpec.model_validate(data)

    return make


def _without_room(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "room_id"}


def _room_seed(ctx: SignalContext) -> int:
    """Instruments of one room (same site and ``room_id``) see the same exposures."""
    return stable_seed(ctx.scenario_seed, ctx.site.id, ctx.params.get("room_id", ""))


SIMULATED_KINDS: dict[str, SimulatedKind] = {
    "air_monitor": SimulatedKind(
        make_spec=_air_monitor_spec,
        # Monitors in one prefecture-level city share outdoor weather (PM2.5 episodes).
        make_signal=lambda spec, seed, ctx: AirMonitorSignal(
            spec, seed, outdoor_seed=int(ctx.site.region[:4])
        ),
        profile="air_monitor_iaq8",
        protocol="mqtt",
        quantities=AIR_QUANTITIES,
    ),
    "water_probe": SimulatedKind(
        make_spec=_water_spec("tap"),
        make_signal=lambda spec, seed, ctx: WaterProbeSignal(spec, seed),
        profile="water_probe_wq500",
        protocol="modbus_tcp",
        quantities=PROBE_QUANTITIES,
        fault_model=WaterProbeFaults,
    ),
    "water_station": SimulatedKind(
        make_spec=_water_spec("plant_outlet"),
        make_signal=lambda spec, seed, ctx: WaterStationSignal(spec, seed),
        profile="water_station_ws900",
        protocol="hj212",
        quantities=STATION_QUANTITIES,
        fault_model=WaterProbeFaults,
    ),
    "pool_monitor": SimulatedKind(
        make_spec=lambda params, site: PoolSpec.model_validate(dict(params)),
        make_signal=lambda spec, seed, ctx: PoolSignal(spec, seed),
        profile="pool_monitor_pm300",
        protocol="modbus_tcp",
        quantities=POOL_QUANTITIES,
        fault_model=PoolFaults,
    ),
    "sterilizer": SimulatedKind(
        make_spec=lambda params, site: SterilizerSpec.model_validate(dict(params)),
        make_signal=lambda spec, seed, ctx: SterilizerSignal(spec, seed),
        profile="sterilizer_ps120",
        protocol="mqtt",
        quantities=STERILIZER_QUANTITIES,
        fault_model=SterilizerFaults,
    ),
    "dose_rate_monitor": SimulatedKind(
        make_spec=lambda params, site: DoseRateMonitorSpec.model_validate(_without_room(params)),
        make_signal=lambda spec, seed, ctx: DoseRateMonitorSignal(
            spec, seed, room_seed=_room_seed(ctx)
        ),
        profile="dose_rate_monitor_gr10",
        protocol="coap",
        quantities=MONITOR_QUANTITIES,
        fault_model=RadiationFaults,
    ),
    "dosimeter": SimulatedKind(
        make_spec=lambda params, site: PersonalDosimeterSpec.model_validate(_without_room(params)),
        make_signal=lambda spec, seed, ctx: PersonalDosimeterSignal(
            spec, seed, room_seed=_room_seed(ctx)
        ),
        profile="dosimeter_reader_dr20",
        protocol="coap",
        quantities=DOSIMETER_QUANTITIES,
        fault_model=RadiationFaults,
    ),
}


def kind_infos() -> dict[str, KindInfo]:
    return {name: kind.info(name) for name, kind in SIMULATED_KINDS.items()}


def _speaks(profile: Any, protocol: str) -> bool:
    """The registry's rule: RTU framing over a TCP serial server is still the profile's RTU."""
    return bool(profile.speaks("modbus_rtu" if protocol == "modbus_rtu_tcp" else protocol))


# ---- the scenario -------------------------------------------------------------------------------


def _render(template: str, n: int, what: str) -> str:
    try:
        return template.format(n=n)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{what} template {template!r}: {exc} (use {{n}}, e.g. {{n:05d}})"
        ) from None


def _located(what: str, index: int, member: str, exc: ValidationError) -> list[str]:
    """Field errors as pydantic locates them in the file (``sites.1.region``), plus the member
    of a group they come from."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{what}.{index}.{loc}{member}: {msg}")
    return out


class Scenario(_Frozen):
    """A validated scenario. ``sites`` and ``devices`` are the expanded entries; the file's
    entries (groups included) stay in ``site_groups`` / ``device_groups``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str
    description: str = ""
    seed: int = 0
    start: datetime | None = Field(default=None, description="Offline default start (ISO 8601)")
    duration: Duration | None = Field(default=None, description="Offline default length, '7d'")
    tenants: tuple[TenantConfig, ...]
    site_groups: tuple[SiteGroup, ...] = Field(alias="sites")
    device_groups: tuple[DeviceGroup, ...] = Field(alias="devices")
    faults: tuple[FaultConfig, ...] = ()

    _sites: tuple[SiteConfig, ...] = PrivateAttr(default=())
    _devices: tuple[DeviceConfig, ...] = PrivateAttr(default=())
    _site_index: dict[str, SiteConfig] = PrivateAttr(default_factory=dict)
    _device_index: dict[str, DeviceConfig] = PrivateAttr(default_factory=dict)
    _specs: dict[str, Any] = PrivateAttr(default_factory=dict)
    _fault_devices: tuple[tuple[str, ...], ...] = PrivateAttr(default=())
    _origin: dict[tuple[str, str], int] = PrivateAttr(default_factory=dict)

    @field_validator("start", mode="before")
    @classmethod
    def _aware(cls, value: Any) -> Any:
        return None if value is None else parse_instant(value)

    @model_validator(mode="after")
    def _expand_and_check(self) -> Scenario:
        problems: list[str] = []
        sites = self._expand_sites(problems)
        devices = self._expand_devices(sites, problems)
        for what, items in (("tenants", self.tenants), ("sites", sites), ("devices", devices)):
            seen: set[str] = set()
            for item in items:
                if item.id in seen:
                    problems.append(f"{self._where(what, item.id)}: duplicate id {item.id!r}")
                seen.add(item.id)
        tenants = {t.id for t in self.tenants}
        for site in sites:
            if site.tenant not in tenants:
                problems.append(
                    f"{self._where('sites', site.id)}.tenant: {site.tenant!r} is not a tenant"
                )
        site_index = {s.id: s for s in sites}
        sites = self._resolve_venue_types(sites, devices)
        site_index = {s.id: s for s in sites}
        devices = self._check_devices(devices, site_index, problems)
        self._check_faults(devices, problems)
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))
        self._sites, self._devices = tuple(sites), tuple(devices)
        self._site_index = site_index
        self._device_index = {d.id: d for d in devices}
        return self

    # ---- expansion ------------------------------------------------------------------------------

    def _where(self, what: str, ident: str) -> str:
        """``devices[3] (probe-00012)``: the file's entry (a group's index for its members)."""
        index = self._origin.get((what, ident))
        return f"{what} ({ident})" if index is None else f"{what}[{index}] ({ident})"

    def _expand_sites(self, problems: list[str]) -> list[SiteConfig]:
        out: list[SiteConfig] = []
        for i, group in enumerate(self.site_groups):
            data = {"id": group.id, **(group.model_extra or {})}
            for n in range(1, (group.count or 1) + 1):
                member = dict(data)
                label = f" ({group.id})"
                try:
                    if group.count is not None:
                        member["id"] = _render(group.id, n, "id")
                        label = f" (#{n} {member['id']})"
                        if isinstance(member.get("name"), str):
                            member["name"] = _render(member["name"], n, "name")
                        # Members scatter around the given position, the same on every load.
                        for axis, salt in (("lat", 1), ("lon", 2)):
                            if isinstance(member.get(axis), int | float):
                                u = stable_seed(self.seed, member["id"], salt) / 2**32
                                shifted = member[axis] + (u - 0.5) * group.spread_deg
                                member[axis] = round(shifted, 6)
                    site = SiteConfig.model_validate(member)
                except ValidationError as exc:
                    problems.extend(_located("sites", i, label, exc))
                    break
                except ValueError as exc:
                    problems.append(f"sites[{i}] ({group.id}): {exc}")
                    break
                self._origin[("sites", site.id)] = i
                out.append(site)
        return out

    def _expand_devices(self, sites: list[SiteConfig], problems: list[str]) -> list[DeviceConfig]:
        out: list[DeviceConfig] = []
        for i, group in enumerate(self.device_groups):
            data = {"id": group.id, **(group.model_extra or {})}
            site_spec = data.get("site")
            targets: list[str] | None = None
            if isinstance(site_spec, str) and _GLOB.search(site_spec) and "{" not in site_spec:
                targets = [s.id for s in sites if fnmatch.fnmatchcase(s.id, site_spec)]
                if not targets:
                    problems.append(
                        f"devices[{i}] ({group.id}).site: {site_spec!r} matches no site"
                    )
                    continue
            for n in range(1, (group.count or 1) + 1):
                member = dict(data)
                label = f" ({group.id})"
                try:
                    if group.count is not None:
                        member["id"] = _render(group.id, n, "id")
                        label = f" (#{n} {member['id']})"
                        if isinstance(site_spec, str) and targets is None:
                            member["site"] = _render(site_spec, n, "site")
                    if targets is not None:  # dealt round-robin over the matching sites
                        member["site"] = targets[(n - 1) % len(targets)]
                    device = DeviceConfig.model_validate(member)
                except ValidationError as exc:
                    problems.extend(_located("devices", i, label, exc))
                    break
                except ValueError as exc:
                    problems.append(f"devices[{i}] ({group.id}): {exc}")
                    break
                self._origin[("devices", device.id)] = i
                out.append(device)
        return out

    def _resolve_venue_types(
        self, sites: list[SiteConfig], devices: list[DeviceConfig]
    ) -> list[SiteConfig]:
        """Explicit ``venue_type``, else the air venue's, else the first device's kind's."""
        first_kind: dict[str, str] = {}
        for d in devices:
            first_kind.setdefault(d.site, d.kind)
        out = []
        for site in sites:
            if site.venue_type is None:
                venue_type = (
                    AIR_VENUE_TYPES[site.venue]
                    if site.venue is not None
                    else KIND_VENUE_TYPES.get(first_kind.get(site.id, ""), "public_place")
                )
                site = site.model_copy(update={"venue_type": venue_type})
            out.append(site)
        return out

    def _check_devices(
        self, devices: list[DeviceConfig], sites: Mapping[str, SiteConfig], problems: list[str]
    ) -> list[DeviceConfig]:
        profiles = load_profiles()
        memo: dict[bytes, Any] = {}
        out = []
        for device in devices:
            where = self._where("devices", device.id)
            site = sites.get(device.site)
            if site is None:
                problems.append(f"{where}.site: {device.site!r} is not a site")
                continue
            kind = SIMULATED_KINDS.get(device.kind)
            if kind is None:
                problems.append(
                    f"{where}.kind: no simulator for {device.kind!r} "
                    f"(available: {', '.join(sorted(SIMULATED_KINDS))})"
                )
                continue
            profile_id = device.profile or kind.profile
            protocol = device.protocol or kind.protocol
            profile = profiles.get(profile_id)
            if profile is None:
                problems.append(f"{where}.profile: no device profile {profile_id!r}")
                continue
            if profile.kind != device.kind:
                problems.append(
                    f"{where}.profile: {profile_id!r} is a {profile.kind!r}, not {device.kind!r}"
                )
                continue
            if not _speaks(profile, protocol):
                problems.append(
                    f"{where}.protocol: profile {profile_id!r} speaks "
                    f"{', '.join(profile.protocols)}, not {protocol!r}"
                )
                continue
            key = orjson.dumps(
                [device.kind, site.venue, site.venue_type, device.params],
                option=orjson.OPT_SORT_KEYS,
                default=str,
            )
            try:
                spec = memo.get(key)
                if spec is None:
                    spec = memo[key] = kind.make_spec(device.params, site)
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    msg = err["msg"].removeprefix("Value error, ")
                    problems.append(f"{where}.params.{loc}: {msg}")
                continue
            self._specs[device.id] = spec
            if device.interval_s is None or device.profile is None or device.protocol is None:
                device = device.model_copy(
                    update={
                        "interval_s": device.interval_s or float(profile.interval_s),
                        "profile": profile_id,
                        "protocol": protocol,
                    }
                )
            out.append(device)
        return out

    def _check_faults(self, devices: list[DeviceConfig], problems: list[str]) -> None:
        infos = kind_infos()
        matched_all = []
        for i, fault in enumerate(self.faults):
            where = f"faults[{i}] ({fault.type} on {fault.device})"
            matched = [d for d in devices if fault.matches(d.id)]
            matched_all.append(tuple(d.id for d in matched))
            if not matched:
                problems.append(f"{where}.device: {fault.device!r} matches no device")
                continue
            for kind in dict.fromkeys(d.kind for d in matched):
                _, found = fault.fault_type.validate(fault.params, infos[kind])
                problems.extend(f"{where}: {p}" for p in found)
            for protocol in dict.fromkeys(d.protocol or "" for d in matched):
                problem = protocol_problem(fault.type, protocol)
                if problem:
                    problems.append(f"{where}: {problem}")
        self._fault_devices = tuple(matched_all)

    # ---- lookups --------------------------------------------------------------------------------

    @property
    def sites(self) -> tuple[SiteConfig, ...]:
        return self._sites

    @property
    def devices(self) -> tuple[DeviceConfig, ...]:
        return self._devices

    def site(self, site_id: str) -> SiteConfig:
        return self._site_index[site_id]

    def device(self, device_id: str) -> DeviceConfig:
        return self._device_index[device_id]

    def tenant_of(self, device: DeviceConfig) -> str:
        return self._site_index[device.site].tenant

    def device_seed(self, device: DeviceConfig) -> int:
        """Stable across runs and Python versions (crc32, not the salted ``hash``)."""
        if device.seed is not None:
            return device.seed
        return stable_seed(self.seed, device.id)

    def spec(self, device: DeviceConfig) -> Any:
        """The device's validated signal spec."""
        return self._specs[device.id]

    def protocols(self) -> dict[str, int]:
        """Devices per protocol."""
        out: dict[str, int] = {}
        for d in self._devices:
            out[d.protocol or ""] = out.get(d.protocol or "", 0) + 1
        return out

    def fault_devices(self, index: int) -> tuple[str, ...]:
        """The devices ``faults[index]`` applies to."""
        return self._fault_devices[index]

    # ---- building -------------------------------------------------------------------------------

    def time_range(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        duration: float | str | timedelta | None = None,
    ) -> tuple[datetime, datetime]:
        """[start, end) for an offline run: arguments first, then the scenario's defaults."""
        t0 = start or self.start
        if t0 is None:
            raise ValueError(f"scenario {self.name!r} has no start: give one (ISO 8601)")
        if t0.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if end is None:
            length = parse_duration(duration) if duration is not None else self.duration
            if length is None:
                raise ValueError(f"scenario {self.name!r} has no duration: give end or duration")
            end = t0 + timedelta(seconds=length)
        if end <= t0:
            raise ValueError("end must be after start")
        return t0, end

    def plan(self, start: datetime, *, devices: Sequence[str] | None = None) -> list[SimDevice]:
        """Every device (or those named) ready to run from ``start``: a fresh signal model per
        device, faults resolved to absolute windows. Call again for a new run."""
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        configs = (
            self._devices if devices is None else tuple(self._device_index[d] for d in devices)
        )
        planned = plan_faults(
            self.faults, [_Planned(d) for d in configs], kind_infos(), start.timestamp()
        )
        out = []
        for config in configs:
            site = self._site_index[config.site]
            kind = SIMULATED_KINDS[config.kind]
            seed = self.device_seed(config)
            ctx = SignalContext(self.seed, site, config.id, config.params)
            spec = self._specs[config.id]

            def factory(
                kind: SimulatedKind = kind,
                spec: Any = spec,
                ctx: SignalContext = ctx,
                seed: int = seed,
            ) -> Any:
                return kind.make_signal(spec, seed, ctx)

            signal = factory()
            faults = tuple(planned.get(config.id, ()))
            source = FaultedSignal(signal, faults, seed=seed) if faults else None
            out.append(SimDevice(config, site, seed, signal, faults, source, factory))
        return out


@dataclass(frozen=True)
class _Planned:
    config: DeviceConfig

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def interval_s(self) -> float:
        return float(self.config.interval_s or 60.0)


@dataclass(frozen=True, eq=False)
class SimDevice:
    """One device of a planned run: declaration, signal model and faults.

    ``emit(t)`` / ``emit_ts(ts)`` is what the device puts on the wire at a tick (faults applied);
    ``source`` is what a transport should sample: the :class:`FaultedSignal` when the device has
    faults (it has ``emit``), else the bare signal.
    """

    config: DeviceConfig
    site_config: SiteConfig
    seed: int
    signal: Any
    faults: tuple[PlannedFault, ...]
    faulted: FaultedSignal | None
    factory: Callable[[], Any] = field(repr=False)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def tenant(self) -> str:
        return self.site_config.tenant

    @property
    def site(self) -> str:
        return self.site_config.id

    @property
    def region(self) -> str:
        return self.site_config.region

    @property
    def profile(self) -> str:
        return self.config.profile or SIMULATED_KINDS[self.kind].profile

    @property
    def protocol(self) -> str:
        return self.config.protocol or SIMULATED_KINDS[self.kind].protocol

    @property
    def interval_s(self) -> float:
        return float(self.config.interval_s or 60.0)

    @property
    def source(self) -> Any:
        return self.faulted if self.faulted is not None else self.signal

    def new_signal(self) -> Any:
        """A fresh, unfaulted model with this device's spec and seed (for ground-truth scans)."""
        return self.factory()

    def emit_ts(self, ts: float) -> Emission:
        if self.faulted is not None:
            return self.faulted.emit_ts(ts)
        return ts, self.signal.sample_ts(ts)

    def emit(self, t: datetime) -> tuple[datetime, dict[str, Any]] | Malformed | None:
        if self.faulted is not None:
            return self.faulted.emit(t)
        return t, self.signal.sample(t)


def resolve_scenario_path(source: str | Path) -> Path:
    """A bare name (``demo``) means ``simulators/scenarios/<name>.yaml``; otherwise a path."""
    text = str(source)
    if "/" not in text and "\\" not in text and not text.endswith((".yaml", ".yml")):
        return SCENARIO_DIR / f"{text}.yaml"
    return Path(source)


def scenario_from_data(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate an already parsed scenario document; errors name ``source``."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["loc"]:
                lines.append(f"  {'.'.join(str(p) for p in err['loc'])}: {msg}")
            else:  # cross-reference problems locate themselves, one per line
                lines.extend(f"  {line}" for line in msg.splitlines())
        raise ScenarioError(f"{source}: invalid scenario:\n" + "\n".join(lines)) from exc


def load_scenario(source: str | Path) -> Scenario:
    path = resolve_scenario_path(source)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    return scenario_from_data(data, str(path))


def shipped_scenarios() -> list[str]:
    """Names of the scenarios in ``simulators/scenarios/``."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


# ---- from scenario to MQTT devices, fleet and directory -----------------------------------------


class Account(Protocol):
    @property
    def username(self) -> str: ...

    @property
    def password(self) -> str: ...


Credentials = Callable[[str, str, str], Account]
"""``credentials(device, tenant, site)`` → the device's broker account."""


def mqtt_devices(
    planned: Sequence[SimDevice],
    credentials: Credentials,
    *,
    interval_s: float | None = None,
    speed: float = 1.0,
) -> list[SimulatedMqttDevice]:
    """``SimulatedMqttDevice`` declarations for the planned MQTT devices. ``speed`` > 1 shortens
    the real interval (simulated time runs faster); ``interval_s`` overrides it (fast tests)."""
    out = []
    for device in planned:
        if device.protocol != "mqtt":
            continue
        account = credentials(device.id, device.tenant, device.site)
        out.append(
            SimulatedMqttDevice(
                tenant=device.tenant,
                site=device.site,
                device=device.id,
                kind=device.kind,
                username=account.username,
                password=account.password,
                interval_s=interval_s or device.interval_s / speed,
                signal=device.source,
            )
        )
    return out


def build_devices(
    scenario: Scenario,
    credentials: Credentials,
    *,
    interval_s: float | None = None,
    start: datetime | None = None,
) -> list[SimulatedMqttDevice]:
    """Declarations for the scenario's MQTT devices, faults planned from ``start`` (default now);
    ``interval_s`` overrides the scenario's (fast tests)."""
    planned = scenario.plan(start or datetime.now(UTC))
    return mqtt_devices(planned, credentials, interval_s=interval_s)


def build_fleet(
    scenario: Scenario,
    credentials: Credentials,
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    interval_s: float | None = None,
    start: datetime | None = None,
    **fleet_options: Any,
) -> MqttFleet:
    """An ``MqttFleet`` of the scenario's MQTT devices (``fleet_options`` go to ``MqttFleet``)."""
    devices = build_devices(scenario, credentials, interval_s=interval_s, start=start)
    return MqttFleet(devices, host, port, seed=scenario.seed, **fleet_options)


def directory_entries(scenario: Scenario) -> list[dict[str, str]]:
    """Rows for the platform's device directory: ``{device, tenant, site, kind, region}``."""
    sites = {s.id: s for s in scenario.sites}
    return [
        {
            "device": d.id,
            "tenant": sites[d.site].tenant,
            "site": d.site,
            "kind": d.kind,
            "region": sites[d.site].region,
        }
        for d in scenario.devices
    ]


def site_entries(scenario: Scenario) -> list[dict[str, Any]]:
    """Rows describing sites (for maps and dashboards)."""
    return [s.model_dump() for s in scenario.sites]


# ---- command line -------------------------------------------------------------------------------


def _read_accounts(path: Path) -> dict[str, str]:
    """``user:password`` lines (the format of ``LocalMosquitto``'s accounts file)."""
    pairs = (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    return {user: password for user, password in pairs}


@dataclass(frozen=True)
class _StaticAccount:
    username: str
    password: str


async def _run(scenario: Scenario, args: argparse.Namespace) -> int:
    accounts = _read_accounts(Path(args.accounts))
    mqtt = [d for d in scenario.devices if d.protocol == "mqtt"]
    missing = [d.id for d in mqtt if d.id not in accounts]
    if missing:
        print(f"no broker account for: {', '.join(missing)}", file=sys.stderr)
        return 2
    fleet = build_fleet(
        scenario,
        lambda device, _t, _s: _StaticAccount(device, accounts[device]),
        args.host,
        args.port,
        batch_size=args.batch_size,
    )
    async with fleet:
        loop = asyncio.get_running_loop()
        end = None if args.duration is None else loop.time() + args.duration
        while end is None or loop.time() < end:
            await asyncio.sleep(10.0 if end is None else min(10.0, max(end - loop.time(), 0)))
            r = fleet.rates()
            log.info(
                "%d/%d connected, %.1f msg/s acked of %.1f intended, CPU %.0f%%",
                r.connected,
                r.devices,
                r.acked_msgs_per_s,
                r.intended_msgs_per_s,
                100 * r.cpu_fraction,
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.scenario",
        description="Run a scenario's simulated MQTT devices against a broker.",
    )
    parser.add_argument("scenario", help="scenario name (simulators/scenarios/) or YAML path")
    parser.add_argument("--directory", action="store_true", help="print directory rows and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--accounts", help="file of device:password lines")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.directory:
        print(yaml.safe_dump(directory_entries(scenario), allow_unicode=True, sort_keys=False))
        return 0
    if not args.accounts:
        parser.error("--accounts is required to connect")
    try:
        return asyncio.run(_run(scenario, args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
