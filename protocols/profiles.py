"""Device profiles: what one device model measures, how well, and where it keeps each value.

A profile is a YAML file in ``protocols/data/profiles/`` named after its id (format:
docs/profiles.md). Profiles are checked against the catalog when loaded, so a wrong unit, a
range the instrument cannot read or two overlapping registers stop the platform at start with
the file and field named, instead of turning into wrong numbers in InfluxDB months later.
"""

from __future__ import annotations

import difflib
import math
import types
from collections.abc import Iterator, Mapping, Sequence
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from protocols.catalog import DATA_DIR, Catalog, default_catalog
from protocols.registers import (
    MAX_ADDRESS,
    MAX_READ,
    DType,
    Function,
    Order,
    ReadRequest,
    RegisterField,
    is_integer,
    plan_reads,
    register_count,
)

PROFILES_DIR = DATA_DIR / "profiles"
ProtocolName = Literal[
    "modbus_tcp", "modbus_rtu_tcp", "modbus_rtu", "mqtt", "coap", "http", "hj212"
]
MODBUS: frozenset[str] = frozenset({"modbus_tcp", "modbus_rtu_tcp", "modbus_rtu"})
ProfileId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_]{0,63}$")]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class QuantityEntry(BaseModel):
    """What the instrument can read of one quantity: narrower than the catalog's physics."""

    model_config = _STRICT

    unit: str | None = None
    range: tuple[float, float] | None = None
    resolution: float | None = Field(default=None, gt=0)
    values: tuple[str, ...] | None = None  # text quantities: every value the model reports


class RegisterEntry(BaseModel):
    """Where a quantity lives in the register map; value = raw * scale + offset."""

    model_config = _STRICT

    address: int = Field(ge=0, le=65535)
    function: Function
    dtype: DType
    byte_order: Order | None = None  # None: the profile's modbus.byte_order
    word_order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0


class SerialSettings(BaseModel):
    """Factory line settings for Modbus RTU (RS-485)."""

    model_config = _STRICT

    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class ModbusSettings(BaseModel):
    """Per-model Modbus defaults; a device's registry entry may override the unit id and port."""

    model_config = _STRICT

    unit_id: int = Field(default=1, ge=0, le=255)
    tcp_port: int = Field(default=502, ge=1, le=65535)
    serial: SerialSettings = SerialSettings()
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    max_registers_per_request: int = Field(default=MAX_READ, ge=1, le=MAX_READ)
    max_gap: int = Field(default=8, ge=0, le=MAX_READ - 1)
    byte_order: Order = "big"
    word_order: Order = "big"


class Hj212Settings(BaseModel):
    """Factor codes this station model sends (HJ 212-2017 Appendix B, or agreed private codes)."""

    model_config = _STRICT

    codes: dict[str, Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{2,16}$")]]


class Profile(BaseModel):
    """One device model. Build it with :func:`load_profile` so it is checked against the catalog."""

    model_config = _STRICT

    id: ProfileId
    manufacturer: str = Field(min_length=1)
    model: str = Field(min_length=1)
    reference: bool = False  # an invented reference model, not a product on the market
    description: str = ""
    kind: str
    protocols: tuple[ProtocolName, ...] = Field(min_length=1)
    interval_s: float = Field(gt=0, le=86400)
    quantities: dict[str, QuantityEntry] = Field(min_length=1)
    modbus: ModbusSettings | None = None
    registers: dict[str, RegisterEntry] | None = None
    hj212: Hj212Settings | None = None

    def speaks(self, protocol: str) -> bool:
        return protocol in self.protocols

    @cached_property
    def register_fields(self) -> dict[str, RegisterField]:
        """The register map with the profile's byte and word order defaults filled in."""
        return {name: self.register_field(name) for name in self.registers or {}}

    def register_field(self, name: str) -> RegisterField:
        settings = self.modbus or ModbusSettings()
        entry = (self.registers or {})[name]
        return RegisterField(
            name=name,
            address=entry.address,
            function=entry.function,
            dtype=entry.dtype,
            byte_order=entry.byte_order or settings.byte_order,
            word_order=entry.word_order or settings.word_order,
            scale=entry.scale,
            offset=entry.offset,
        )

    @cached_property
    def read_plan(self) -> tuple[ReadRequest, ...]:
        """The fewest read requests that fetch the whole register map."""
        settings = self.modbus or ModbusSettings()
        return tuple(
            plan_reads(
                self.register_fields.values(),
                max_count=settings.max_registers_per_request,
                max_gap=settings.max_gap,
            )
        )

    def decode_registers(self, responses: Sequence[Sequence[int] | None]) -> dict[str, float]:
        """Physical values from the responses to :attr:`read_plan`, in the same order.

        A ``None`` response (that request failed) leaves its quantities out rather than losing
        the whole poll. NaN from a float register passes through: validation rejects it by name.
        """
        plan = self.read_plan
        if len(responses) != len(plan):
            raise ValueError(f"{self.id}: {len(responses)} responses for {len(plan)} requests")
        fields = self.register_fields
        values: dict[str, float] = {}
        for request, response in zip(plan, responses, strict=True):
            if response is not None:
                for name, registers in request.extract(response).items():
                    values[name] = fields[name].decode(registers)
        return values

    def encode_registers(self, values: Mapping[str, float]) -> dict[int, dict[int, int]]:
        """function → address → register value, for a simulator serving these values."""
        fields = self.register_fields
        out: dict[int, dict[int, int]] = {3: {}, 4: {}}
        for name, value in values.items():
            field = fields[name]
            for i, word in enumerate(field.encode(value)):
                out[field.function][field.address + i] = word
        return out


class ProfileError(ValueError):
    """A profile file is invalid. The message names the file, each field path, and why."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        detail = "; ".join(f"{path}: {why}" if path else why for path, why in self.problems)
        super().__init__(f"{source}: {detail}")


class ProfileSet(Mapping[str, Profile]):
    """Every profile by id."""

    def __init__(self, profiles: Mapping[str, Profile]) -> None:
        self._profiles = dict(profiles)

    def __getitem__(self, profile_id: str) -> Profile:
        try:
            return self._profiles[profile_id]
        except KeyError:
            known = ", ".join(sorted(self._profiles)) or "none"
            raise KeyError(f"no device profile {profile_id!r}; known: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)

    def for_kind(self, kind: str) -> list[Profile]:
        return [p for p in self._profiles.values() if p.kind == kind]


def load_profiles(directory: Path | None = None, catalog: Catalog | None = None) -> ProfileSet:
    """Every ``*.yaml`` profile in ``directory`` (default: the shipped ones, loaded once)."""
    if directory is None and catalog is None:
        return _default_profiles()
    directory = PROFILES_DIR if directory is None else directory
    catalog = default_catalog() if catalog is None else catalog
    profiles = [load_profile(path, catalog) for path in sorted(directory.glob("*.yaml"))]
    return ProfileSet({p.id: p for p in profiles})


@cache
def _default_profiles() -> ProfileSet:
    return load_profiles(PROFILES_DIR, default_catalog())


def load_profile(path: Path, catalog: Catalog | None = None) -> Profile:
    source = _display(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ProfileError(source, [("", f"cannot read: {exc}")]) from exc
    if not isinstance(raw, dict):
        raise ProfileError(source, [("", "a profile must be a mapping of keys to values")])
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(source, [_explain(err) for err in exc.errors()]) from None
    problems = check_profile(profile, catalog or default_catalog())
    if profile.id != path.stem:
        problems.insert(0, ("id", f"{profile.id!r} must match the file name {path.stem!r}"))
    if problems:
        raise ProfileError(source, problems)
    return profile


def check_profile(profile: Profile, catalog: Catalog) -> list[tuple[str, str]]:
    """What is wrong with ``profile`` beyond its shape: (field path, why) pairs."""
    problems: list[tuple[str, str]] = []
    kind = catalog.kinds.get(profile.kind)
    if kind is None:
        known = ", ".join(sorted(catalog.kinds))
        problems.append(("kind", f"{profile.kind!r} is not a device kind; known: {known}"))
    for protocol in set(profile.protocols):
        if profile.protocols.count(protocol) > 1:
            problems.append(("protocols", f"{protocol!r} is listed twice"))
    for name, entry in profile.quantities.items():
        path = f"quantities.{name}"
        quantity = catalog.quantities.get(name)
        if quantity is None:
            problems.append((path, f"not a canonical quantity{_suggest(name, catalog.quantities)}"))
            continue
        if kind is not None and name not in kind.quantities:
            problems.append((path, f"not measured by kind {kind.name!r}"))
        numeric = quantity.type in ("float", "int")
        if numeric:
            if entry.unit != quantity.unit:
                problems.append(
                    (f"{path}.unit", f"{entry.unit!r} is not the catalog's unit {quantity.unit!r}")
                )
            if entry.range is None:
                problems.append((f"{path}.range", "required: [min, max] the instrument reads"))
            else:
                problems.extend(_check_range(f"{path}.range", entry.range, quantity))
            if entry.resolution is None:
                problems.append((f"{path}.resolution", "required: the smallest step reported"))
        else:
            for key in ("unit", "range", "resolution"):
                if getattr(entry, key) is not None:
                    problems.append((f"{path}.{key}", f"a {quantity.type} quantity has no {key}"))
        if entry.values is not None and quantity.type != "str":
            problems.append((f"{path}.values", "only text quantities list values"))
    problems.extend(_check_modbus(profile, catalog))
    problems.extend(_check_hj212(profile))
    return problems


def _check_range(path: str, bounds: tuple[float, float], quantity: Any) -> list[tuple[str, str]]:
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        return [(path, f"[{low}, {high}] must be finite with min < max")]
    if (quantity.low is not None and low < quantity.low) or (
        quantity.high is not None and high > quantity.high
    ):
        return [
            (
                path,
                f"[{low}, {high}] exceeds the physical range "
                f"[{quantity.low}, {quantity.high}] {quantity.unit} of {quantity.name}",
            )
        ]
    return []


def _check_modbus(profile: Profile, catalog: Catalog) -> list[tuple[str, str]]:
    speaks_modbus = any(p in MODBUS for p in profile.protocols)
    if not speaks_modbus:
        return [
            (key, "only a Modbus profile (modbus_tcp, modbus_rtu_tcp, modbus_rtu) has this section")
            for key in ("modbus", "registers")
            if getattr(profile, key) is not None
        ]
    if not profile.registers:
        return [("registers", "a Modbus profile needs a register map")]
    problems: list[tuple[str, str]] = []
    settings = profile.modbus or ModbusSettings()
    for name in profile.quantities:
        if name not in profile.registers:
            problems.append((f"quantities.{name}", "has no entry in registers, so is never read"))
    occupied: dict[int, dict[int, str]] = {3: {}, 4: {}}  # function → register → quantity
    in_order = sorted(profile.registers.items(), key=lambda i: (i[1].function, i[1].address))
    for name, entry in in_order:  # so an overlap is reported on the later field
        path = f"registers.{name}"
        if name not in profile.quantities:
            problems.append(
                (path, f"not one of the profile's quantities{_suggest(name, profile.quantities)}")
            )
            continue
        quantity = catalog.quantities.get(name)
        if quantity is not None and quantity.type not in ("float", "int"):
            problems.append((path, f"{name} is a {quantity.type} quantity; registers hold numbers"))
            continue
        if entry.scale == 0 or not math.isfinite(entry.scale):
            problems.append((f"{path}.scale", f"{entry.scale} must be finite and non-zero"))
            continue
        if not math.isfinite(entry.offset):
            problems.append((f"{path}.offset", f"{entry.offset} must be finite"))
            continue
        last = entry.address + register_count(entry.dtype) - 1
        if last > MAX_ADDRESS:
            problems.append(
                (f"{path}.address", f"{entry.dtype} at {entry.address} ends past 65535")
            )
            continue
        field = profile.register_field(name)
        if field.count > settings.max_registers_per_request:
            problems.append(
                (
                    f"{path}.dtype",
                    f"{field.dtype} takes {field.count} registers, more than "
                    f"modbus.max_registers_per_request {settings.max_registers_per_request}",
                )
            )
        taken = occupied[field.function]
        clash = sorted({taken[a] for a in range(field.address, field.end) if a in taken})
        if clash:
            problems.append(
                (
                    f"{path}.address",
                    f"registers {field.address}..{field.end - 1} (function {field.function}) "
                    f"overlap {', '.join(clash)}",
                )
            )
        taken.update(dict.fromkeys(range(field.address, field.end), name))
        problems.extend(_check_representable(path, field, profile.quantities[name]))
    return problems


def _check_representable(
    path: str, field: RegisterField, entry: QuantityEntry
) -> list[tuple[str, str]]:
    """An integer register must be able to express the instrument's range and resolution."""
    if not is_integer(field.dtype):
        return []
    problems = []
    low, high = field.value_bounds()
    if entry.range is not None and (entry.range[0] < low or entry.range[1] > high):
        problems.append(
            (
                f"{path}.dtype",
                f"{field.dtype} × {field.scale:g} + {field.offset:g} expresses only "
                f"[{low:g}, {high:g}], not the range [{entry.range[0]:g}, {entry.range[1]:g}]",
            )
        )
    if entry.resolution is not None and entry.resolution < abs(field.scale) * (1 - 1e-9):
        problems.append(
            (
                f"{path}.scale",
                f"steps of {abs(field.scale):g} cannot carry the resolution {entry.resolution:g}",
            )
        )
    return problems


def _check_hj212(profile: Profile) -> list[tuple[str, str]]:
    if "hj212" not in profile.protocols:
        return [("hj212", "only an hj212 profile has this section")] if profile.hj212 else []
    if profile.hj212 is None:
        return [("hj212", "an hj212 profile needs hj212.codes: quantity → factor code")]
    codes = profile.hj212.codes
    problems = [
        (f"hj212.codes.{name}", "not one of the profile's quantities")
        for name in codes
        if name not in profile.quantities
    ]
    problems += [
        (f"quantities.{name}", "has no HJ 212 factor code in hj212.codes")
        for name in profile.quantities
        if name not in codes
    ]
    seen: dict[str, str] = {}
    for name, code in codes.items():
        if code in seen:
            problems.append((f"hj212.codes.{name}", f"code {code!r} is already {seen[code]}'s"))
        seen[code] = name
    return problems


def _suggest(name: str, known: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _display(path: Path) -> str:
    """The path as a person would type it: relative to the working directory when inside it."""
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _explain(err: Mapping[str, Any]) -> tuple[str, str]:
    """A pydantic error as (field path, why), in words a profile author can act on."""
    loc = tuple(err["loc"])
    path = ".".join(str(part) for part in loc)
    kind = err["type"]
    given = err.get("input")
    if kind == "literal_error":
        expected = err["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return path, f"{given!r} is not one of {expected}"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(Profile, loc[:-1])
        hint = _suggest(str(loc[-1]), dict.fromkeys(allowed))
        return path, f"unknown key{hint}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return path, "required"
    return path, f"{err['msg'][0].lower()}{err['msg'][1:]}, got {given!r}"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys accepted at ``loc`` inside ``model`` (dict keys are skipped over)."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = annotation.model_fields[str(part)].annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation
