"""Scenarios: who owns which sites, where they are, and which simulated devices they hold — as data.

A scenario file (YAML) is validated into frozen pydantic models before anything connects, and an
error names the file, the entry and the field. From a scenario come:

* ``build_devices`` / ``build_fleet``: the ``SimulatedMqttDevice`` declarations and their fleet,
  given a ``credentials(device, tenant, site)`` callable that returns the device's broker account
  (``LocalMosquitto.allow_device`` has exactly that shape);
* ``directory_entries``: rows ``{device, tenant, site, kind, region}`` for the platform's device
  directory, and ``site_entries`` for maps.

Simulated kinds are a registry (``SIMULATED_KINDS``): a kind names how to validate a device's
``params`` and how to build its signal. Only ``air_monitor`` exists so far.

Run a scenario against a broker whose device accounts exist already::

    python -m simulators.scenario demo --port 1883 --accounts .weijian/mosquitto/accounts
    python -m simulators.scenario demo --directory      # print the directory rows as YAML
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simulators.air_monitor.signal import AirMonitorSignal, AirMonitorSpec, VenueType
from simulators.mqtt_device import MqttFleet, Signal, SimulatedMqttDevice

log = logging.getLogger(__name__)

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # a single MQTT topic level, and an InfluxDB tag value
_REGION = re.compile(r"^[1-8]\d{5}$")  # GB/T 2260 county-level code: province 11..82


class ScenarioError(ValueError):
    """A scenario file is missing, not YAML, or does not validate; the message names the file."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TenantConfig(_Frozen):
    id: str = Field(pattern=_ID)
    name: str


class SiteConfig(_Frozen):
    id: str = Field(pattern=_ID)
    tenant: str
    name: str
    region: str = Field(description="6-digit administrative division code, e.g. 110105")
    venue: VenueType | None = None
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)

    @field_validator("region", mode="before")
    @classmethod
    def _region_code(cls, value: Any) -> str:
        text = str(value)
        if not _REGION.match(text):
            raise ValueError(f"{value!r} is not a 6-digit administrative division code")
        return text


class DeviceConfig(_Frozen):
    id: str = Field(pattern=_ID)
    kind: str
    site: str
    interval_s: float = Field(default=5.0, gt=0)
    seed: int | None = Field(default=None, description="Default: derived from scenario seed + id")
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's signal spec")


@dataclass(frozen=True)
class SimulatedKind:
    """How a device kind is simulated: validate its params, then build its signal."""

    make_spec: Callable[[Mapping[str, Any], SiteConfig], Any]
    make_signal: Callable[[Any, int, int], Signal]


def _air_monitor_spec(params: Mapping[str, Any], site: SiteConfig) -> AirMonitorSpec:
    data = dict(params)
    if site.venue is not None:
        data.setdefault("venue", site.venue)
    return AirMonitorSpec.model_validate(data)


SIMULATED_KINDS: dict[str, SimulatedKind] = {
    "air_monitor": SimulatedKind(
        make_spec=_air_monitor_spec,
        make_signal=lambda spec, seed, outdoor: AirMonitorSignal(spec, seed, outdoor_seed=outdoor),
    ),
}


class Scenario(_Frozen):
    name: str
    description: str = ""
    seed: int = 0
    tenants: tuple[TenantConfig, ...]
    sites: tuple[SiteConfig, ...]
    devices: tuple[DeviceConfig, ...]

    @model_validator(mode="after")
    def _references_and_params(self) -> Scenario:
        problems: list[str] = []
        for what, items in (("tenants", self.tenants), ("sites", self.sites),
                            ("devices", self.devices)):
            seen: set[str] = set()
            for i, item in enumerate(items):
                if item.id in seen:
                    problems.append(f"{what}[{i}]: duplicate id {item.id!r}")
                seen.add(item.id)
        tenants = {t.id for t in self.tenants}
        sites = {s.id: s for s in self.sites}
        for i, site in enumerate(self.sites):
            if site.tenant not in tenants:
                problems.append(f"sites[{i}] ({site.id}).tenant: {site.tenant!r} is not a tenant")
        for i, device in enumerate(self.devices):
            where = f"devices[{i}] ({device.id})"
            if device.site not in sites:
                problems.append(f"{where}.site: {device.site!r} is not a site")
                continue
            kind = SIMULATED_KINDS.get(device.kind)
            if kind is None:
                problems.append(f"{where}.kind: no simulator for {device.kind!r} "
                                f"(available: {', '.join(sorted(SIMULATED_KINDS))})")
                continue
            try:
                kind.make_spec(device.params, sites[device.site])
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    problems.append(f"{where}.params.{loc}: {err['msg']}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def site(self, site_id: str) -> SiteConfig:
        return next(s for s in self.sites if s.id == site_id)

    def device_seed(self, device: DeviceConfig) -> int:
        """Stable across runs and Python versions (crc32, not the salted ``hash``)."""
        if device.seed is not None:
            return device.seed
        return zlib.crc32(f"{self.seed}/{device.id}".encode())


def resolve_scenario_path(source: str | Path) -> Path:
    """A bare name (``demo``) means ``simulators/scenarios/<name>.yaml``; otherwise a path."""
    text = str(source)
    if "/" not in text and "\\" not in text and not text.endswith((".yaml", ".yml")):
        return SCENARIO_DIR / f"{text}.yaml"
    return Path(source)


def load_scenario(source: str | Path) -> Scenario:
    path = resolve_scenario_path(source)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
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
        raise ScenarioError(f"{path}: invalid scenario:\n" + "\n".join(lines)) from exc


# ---- from scenario to devices, fleet and directory ----------------------------------------------

class Account(Protocol):
    @property
    def username(self) -> str: ...

    @property
    def password(self) -> str: ...


Credentials = Callable[[str, str, str], Account]
"""``credentials(device, tenant, site)`` → the device's broker account."""


def build_devices(scenario: Scenario, credentials: Credentials, *,
                  interval_s: float | None = None) -> list[SimulatedMqttDevice]:
    """Declarations for every device; ``interval_s`` overrides the scenario's (fast tests)."""
    devices = []
    for config in scenario.devices:
        site = scenario.site(config.site)
        kind = SIMULATED_KINDS[config.kind]
        spec = kind.make_spec(config.params, site)
        # Monitors in one prefecture-level city share outdoor weather (PM2.5 episodes).
        signal = kind.make_signal(spec, scenario.device_seed(config), int(site.region[:4]))
        account = credentials(config.id, site.tenant, site.id)
        devices.append(SimulatedMqttDevice(
            tenant=site.tenant, site=site.id, device=config.id, kind=config.kind,
            username=account.username, password=account.password,
            interval_s=interval_s or config.interval_s, signal=signal,
        ))
    return devices


def build_fleet(scenario: Scenario, credentials: Credentials, host: str = "127.0.0.1",
                port: int = 1883, *, interval_s: float | None = None,
                **fleet_options: Any) -> MqttFleet:
    """An ``MqttFleet`` of the scenario's devices (``fleet_options`` go to ``MqttFleet``)."""
    devices = build_devices(scenario, credentials, interval_s=interval_s)
    return MqttFleet(devices, host, port, seed=scenario.seed, **fleet_options)


def directory_entries(scenario: Scenario) -> list[dict[str, str]]:
    """Rows for the platform's device directory: ``{device, tenant, site, kind, region}``."""
    sites = {s.id: s for s in scenario.sites}
    return [
        {"device": d.id, "tenant": sites[d.site].tenant, "site": d.site, "kind": d.kind,
         "region": sites[d.site].region}
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
    missing = [d.id for d in scenario.devices if d.id not in accounts]
    if missing:
        print(f"no broker account for: {', '.join(missing)}", file=sys.stderr)
        return 2
    fleet = build_fleet(scenario, lambda device, _t, _s: _StaticAccount(device, accounts[device]),
                        args.host, args.port, batch_size=args.batch_size)
    async with fleet:
        loop = asyncio.get_running_loop()
        end = None if args.duration is None else loop.time() + args.duration
        while end is None or loop.time() < end:
            await asyncio.sleep(10.0 if end is None else min(10.0, max(end - loop.time(), 0)))
            r = fleet.rates()
            log.info("%d/%d connected, %.1f msg/s acked of %.1f intended, CPU %.0f%%",
                     r.connected, r.devices, r.acked_msgs_per_s, r.intended_msgs_per_s,
                     100 * r.cpu_fraction)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.scenario",
                                     description="Run a scenario's simulated devices over MQTT.")
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
