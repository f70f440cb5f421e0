"""Request and response models of the gateway API, with every check that needs no database.

Inputs forbid unknown keys (a typo must not be silently dropped), bound every string, and use
the same vocabularies as the rest of the platform: identifiers as tagged in InfluxDB
(``protocols.reading.IDENTIFIER``), venue types from ``protocols/data/venues.yaml``, device kinds
from the catalog, protocols from ``PROTOCOL_CREDENTIALS``. Checks that need the profile set or the
registry (profile exists and matches the kind, protocol spoken, connection parameters for the
chosen protocol) live in :func:`check_device` so that the routes and the bulk import share them.

``*Update`` models are patches: only the fields present in the request are applied, an explicit
``null`` clears a nullable field and is refused for the others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from gateway.errors import problem, pydantic_details
from gateway.registry.credentials import CREDENTIAL_KINDS, PROTOCOL_CREDENTIALS
from protocols.catalog import DATA_DIR, default_catalog
from protocols.reading import IDENTIFIER, REGION_CODE

T = TypeVar("T")

# ---- vocabularies ------------------------------------------------------------------------------


@cache
def venue_types() -> tuple[str, ...]:
    raw = yaml.safe_load((DATA_DIR / "venues.yaml").read_text(encoding="utf-8"))
    return tuple(raw["venue_types"])


KINDS: tuple[str, ...] = tuple(sorted(default_catalog().kinds))
PROTOCOLS: tuple[str, ...] = tuple(PROTOCOL_CREDENTIALS)
ROLES = ("admin", "city_admin", "county_admin", "tenant_user")
DEVICE_STATUSES = ("active", "disabled")

# Literal[...] over data-file vocabularies: validated and listed as an enum in the OpenAPI schema.
VenueType = Literal[venue_types()]  # type: ignore[valid-type]
Kind = Literal[KINDS]  # type: ignore[valid-type]
Protocol = Literal[PROTOCOLS]  # type: ignore[valid-type]
CredentialKind = Literal[CREDENTIAL_KINDS]  # type: ignore[valid-type]
Role = Literal["admin", "city_admin", "county_admin", "tenant_user"]
DeviceStatus = Literal["active", "disabled"]

IDENTIFIER_PATTERN = f"^{IDENTIFIER.pattern}$"
REGION_PATTERN = f"^{REGION_CODE.pattern}$"
REGION_PREFIX_PATTERN = r"^[0-9]{1,6}$"
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # query filters: no NUL (PostgreSQL refuses it)
PROFILE_PATTERN = r"^[a-z0-9][a-z0-9_]{0,63}$"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # NUL: PostgreSQL refuses it; the rest: log forging

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
RegionCode = Annotated[str, StringConstraints(pattern=REGION_PATTERN)]
ProfileId = Annotated[str, StringConstraints(pattern=PROFILE_PATTERN)]
Username = Annotated[str, StringConstraints(pattern=USERNAME_PATTERN)]


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (line breaks, tabs, NUL)")
    return value


def _text(max_length: int, min_length: int = 0) -> Any:
    return Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        AfterValidator(_no_control),
    ]


Name = _text(200, 1)
Address = _text(400)
Contact = _text(200)
Category = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
SafeInt = Annotated[int, Field(ge=-(2**53), le=2**53)]
AttributeValue = bool | SafeInt | FiniteFloat | _text(400) | None
Attributes = Annotated[
    dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")], AttributeValue],
    Field(max_length=50),
]
Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
IntervalS = Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Patch(_Input):
    """Only the fields sent are applied; ``null`` is accepted only for nullable columns."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _null_only_where_nullable(self) -> _Patch:
        bad = sorted(
            f for f in self.model_fields_set if getattr(self, f) is None and f not in self.nullable
        )
        if bad:
            raise ValueError(f"{', '.join(bad)} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(include=self.model_fields_set)


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    """One page of a listing; ``total`` counts every match, not just this page."""

    items: list[T]
    total: int
    limit: int
    offset: int


# ---- tenants -----------------------------------------------------------------------------------


class TenantCreate(_Input):
    id: Identifier
    name: Name
    category: Category = "other"
    contact: Contact = ""


class TenantUpdate(_Patch):
    name: Name | None = None
    category: Category | None = None
    contact: Contact | None = None


class TenantOut(_Output):
    id: str
    name: str
    category: str
    contact: str
    created_at: datetime
    updated_at: datetime


# ---- sites -------------------------------------------------------------------------------------


def coordinates_problem(latitude: float | None, longitude: float | None) -> str | None:
    if (latitude is None) != (longitude is None):
        return "latitude and longitude go together: give both or neither"
    return None


class SiteCreate(_Input):
    id: Identifier
    tenant_id: Identifier
    name: Name
    address: Address = ""
    region_code: RegionCode = Field(description="6-digit administrative division code")
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    venue_type: VenueType
    attributes: Attributes = Field(
        default_factory=dict,
        description='Rule context beyond the venue type, e.g. {"shielded": true}',
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> SiteCreate:
        if message := coordinates_problem(self.latitude, self.longitude):
            raise ValueError(message)
        return self


class SiteUpdate(_Patch):
    nullable = frozenset({"latitude", "longitude"})

    tenant_id: Identifier | None = Field(
        default=None, description="Immutable: accepted only if equal to the current tenant"
    )
    name: Name | None = None
    address: Address | None = None
    region_code: RegionCode | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    venue_type: VenueType | None = None
    attributes: Attributes | None = None


class SiteOut(_Output):
    id: str
    tenant_id: str
    name: str
    address: str
    region_code: str
    latitude: float | None
    longitude: float | None
    venue_type: str
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime


# ---- devices -----------------------------------------------------------------------------------

Host = Annotated[
    str, StringConstraints(pattern=r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9][A-Za-z0-9\-.:]{0,252})$")
]
SerialPath = Annotated[
    str, StringConstraints(pattern=r"^(/dev/[A-Za-z0-9_./\-]{1,120}|COM[0-9]{1,3})$")
]
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def _baudrate(value: int) -> int:
    if value not in BAUDRATES:
        raise ValueError(f"must be one of {', '.join(map(str, BAUDRATES))}")
    return value


class _Connection(_Input):
    """Unset parameters fall back to the device profile's defaults at poll time."""


class ModbusTcpConnection(_Connection):
    """Modbus TCP, or Modbus RTU framing over a TCP serial server (``modbus_rtu_tcp``)."""

    host: Host
    port: int | None = Field(default=None, ge=1, le=65535, description="Default: profile's (502)")
    unit_id: int | None = Field(default=None, ge=0, le=247)
    timeout_s: float | None = Field(default=None, gt=0, le=60, allow_inf_nan=False)


class ModbusRtuConnection(_Connection):
    """Modbus RTU on a serial line of the collector's host."""

    serial_port: SerialPath = Field(description="e.g. /dev/ttyUSB0 or COM3")
    baudrate: Annotated[int, AfterValidator(_baudrate)] | None = None
    parity: Literal["N", "E", "O"] | None = None
    stopbits: int | None = Field(default=None, ge=1, le=2)
    bytesize: int | None = Field(default=None, ge=7, le=8)
    unit_id: int | None = Field(default=None, ge=0, le=247)
    timeout_s: float | None = Field(default=None, gt=0, le=60, allow_inf_nan=False)


class Hj212Connection(_Connection):
    mn: str = Field(
        pattern=r"^[A-Za-z0-9]{1,24}$",
        description="Station MN (HJ 212-2017 §6.3.2: up to 24 letters and digits)",
    )


class NoConnection(_Connection):
    """The device connects to us (MQTT, HTTP, CoAP): nothing to configure here."""


CONNECTION_MODELS: dict[str, type[_Connection]] = {
    "modbus_tcp": ModbusTcpConnection,
    "modbus_rtu_tcp": ModbusTcpConnection,
    "modbus_rtu": ModbusRtuConnection,
    "hj212": Hj212Connection,
    "mqtt": NoConnection,
    "http": NoConnection,
    "coap": NoConnection,
}
assert set(CONNECTION_MODELS) == set(PROTOCOL_CREDENTIALS), "a protocol lacks connection rules"

ConnectionParams = Annotated[
    dict[Annotated[str, StringConstraints(max_length=64)], Any],
    Field(
        max_length=32,
        description=(
            "Per protocol: modbus_tcp / modbus_rtu_tcp {host, port?, unit_id?, timeout_s?}; "
            "modbus_rtu {serial_port, baudrate?, parity?, stopbits?, bytesize?, unit_id?, "
            "timeout_s?}; hj212 {mn}; mqtt / http / coap {}"
        ),
    ),
]


class DeviceCreate(_Input):
    id: Identifier
    site_id: Identifier
    kind: Kind
    profile: ProfileId
    protocol: Protocol
    connection: ConnectionParams = Field(default_factory=dict)
    interval_s: IntervalS | None = Field(
        default=None, description="Expected reporting interval; default: the profile's"
    )
    status: DeviceStatus = "active"


class DeviceUpdate(_Patch):
    site_id: Identifier | None = None
    kind: Kind | None = None
    profile: ProfileId | None = None
    protocol: Protocol | None = None
    connection: ConnectionParams | None = None
    interval_s: IntervalS | None = None
    status: DeviceStatus | None = None


class DeviceOut(_Output):
    id: str
    site_id: str
    tenant_id: str
    region_code: str
    kind: str
    profile: str
    protocol: str
    connection: dict[str, Any]
    interval_s: float
    status: str
    revision: int
    created_at: datetime
    updated_at: datetime


class CheckedDevice(BaseModel):
    """What :func:`check_device` returns: the normalised values to store."""

    connection: dict[str, Any]
    interval_s: float


def check_device(
    values: Mapping[str, Any], profiles: Mapping[str, Any]
) -> tuple[CheckedDevice | None, list[dict[str, Any]]]:
    """Profile, kind, protocol and connection checks of a device's full (merged) state.

    ``values`` holds kind, profile, protocol, connection and interval_s (None: the profile's).
    Returns the normalised connection and interval, or the problems as error details.
    """
    problems: list[dict[str, Any]] = []
    profile = profiles.get(values["profile"])
    kind, protocol = values["kind"], values["protocol"]
    if profile is None:
        problems.append(problem("profile", f"no device profile {values['profile']!r}"))
    else:
        if profile.kind != kind:
            problems.append(
                problem("kind", f"profile {profile.id!r} is a {profile.kind!r}, not {kind!r}")
            )
        if not profile.speaks(protocol):
            spoken = ", ".join(profile.protocols)
            problems.append(
                problem("protocol", f"profile {profile.id!r} speaks {spoken}, not {protocol!r}")
            )
    connection: dict[str, Any] = {}
    try:
        model = CONNECTION_MODELS[protocol].model_validate(values.get("connection") or {})
        connection = model.model_dump(exclude_none=True)
    except ValidationError as exc:
        problems.extend(pydantic_details(exc.errors(), "connection"))
    interval = values.get("interval_s")
    if interval is None:
        interval = float(profile.interval_s) if profile is not None else 60.0
    if problems:
        return None, problems
    return CheckedDevice(connection=connection, interval_s=interval), []


class IssuedCredential(BaseModel):
    """A device secret, shown in this response only; the registry keeps its hash."""

    kind: CredentialKind
    username: str | None = None
    secret: str
    key_id: str | None = None


class ConnectInfo(BaseModel):
    """What to configure on the device (or on the collector, for polled devices)."""

    protocol: str
    host: str | None = None
    port: int | None = None
    topic: str | None = None
    url: str | None = None
    username: str | None = None
    password: str | None = None
    authorization: str | None = None
    token: str | None = None
    mn: str | None = None
    instructions: str


class DeviceOnboarded(BaseModel):
    device: DeviceOut
    credentials: list[IssuedCredential]
    connect: ConnectInfo


class CredentialRotated(BaseModel):
    credential: IssuedCredential
    connect: ConnectInfo


class CredentialInfo(_Output):
    id: int
    kind: str
    key_id: str
    created_at: datetime
    revoked_at: datetime | None


class RevokeResult(BaseModel):
    revoked: int


# ---- jurisdictions -----------------------------------------------------------------------------


class Channel(_Input):
    type: Literal["email", "sms", "webhook"]
    address: _text(2000, 1)

    @model_validator(mode="after")
    def _address_fits_type(self) -> Channel:
        pattern = {
            "email": r"[^@\s]{1,64}@[A-Za-z0-9\-.]{1,253}\.[A-Za-z]{2,}",
            "sms": r"\+?[0-9]{5,20}",
            "webhook": r"https?://[^\s]{1,2000}",
        }[self.type]
        if re.fullmatch(pattern, self.address) is None:
            raise ValueError(f"{self.address[:80]!r} is not a valid {self.type} address")
        return self


class Officer(_Input):
    name: Name
    role: _text(64) = ""
    channels: Annotated[list[Channel], Field(max_length=20)] = []


Officers = Annotated[list[Officer], Field(max_length=100)]


class JurisdictionCreate(_Input):
    region_code: RegionCode
    name: Name
    officers: Officers = []


class JurisdictionUpdate(_Patch):
    name: Name | None = None
    officers: Officers | None = None


class JurisdictionOut(_Output):
    region_code: str
    name: str
    officers: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


# ---- users and tokens --------------------------------------------------------------------------


def user_rule_problems(
    role: str, region_codes: list[str] | tuple[str, ...], tenant_id: str | None
) -> list[tuple[str, str]]:
    """(field, why) for a role whose region codes or tenant do not fit it."""
    problems: list[tuple[str, str]] = []
    codes = list(region_codes)
    if role in ("admin", "tenant_user") and codes:
        problems.append(("region_codes", f"a {role} has no region codes"))
    if role != "tenant_user" and tenant_id is not None:
        problems.append(("tenant_id", f"only a tenant_user belongs to a tenant, not a {role}"))
    if role == "tenant_user" and tenant_id is None:
        problems.append(("tenant_id", "a tenant_user needs tenant_id"))
    if role in ("city_admin", "county_admin") and not codes:
        problems.append(("region_codes", f"a {role} needs at least one region code"))
    for code in codes:
        if role == "city_admin" and (code[4:] != "00" or code[2:4] == "00"):
            problems.append(("region_codes", f"{code} is not a city code (like 330100)"))
        if role == "county_admin" and code[4:] == "00":
            problems.append(("region_codes", f"{code} is not a county code (like 330102)"))
    if len(set(codes)) != len(codes):
        problems.append(("region_codes", "a region code is listed twice"))
    return problems


class UserCreate(_Input):
    username: Username
    display_name: _text(200) = ""
    password: Password
    role: Role
    region_codes: Annotated[list[RegionCode], Field(max_length=100)] = []
    tenant_id: Identifier | None = None
    active: bool = True

    @model_validator(mode="after")
    def _role_fits(self) -> UserCreate:
        problems = user_rule_problems(self.role, self.region_codes, self.tenant_id)
        if problems:
            raise ValueError("; ".join(f"{field}: {why}" for field, why in problems))
        return self


class UserUpdate(_Patch):
    nullable = frozenset({"tenant_id"})

    display_name: _text(200) | None = None
    password: Password | None = None
    role: Role | None = None
    region_codes: Annotated[list[RegionCode], Field(max_length=100)] | None = None
    tenant_id: Identifier | None = None
    active: bool | None = None


class UserOut(_Output):
    id: int
    username: str
    display_name: str
    role: str
    region_codes: list[str]
    tenant_id: str | None
    active: bool
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime | None = Field(
        description="When the password was last set; JWTs issued before it are refused. "
        "null: not recorded (set before the registry kept it)"
    )


class Me(BaseModel):
    user_id: int
    username: str
    role: str
    region_codes: list[str]
    tenant_id: str | None
    via: Literal["jwt", "api_token"]


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires")


class ApiTokenCreate(_Input):
    name: _text(100, 1)


class ApiTokenOut(_Output):
    id: int
    user_id: int
    name: str
    key_id: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiTokenIssued(ApiTokenOut):
    token: str = Field(description="wjt_<key id>_<secret>: shown once, send as a Bearer token")


# ---- audit -------------------------------------------------------------------------------------


class AuditOut(_Output):
    id: int
    at: datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    detail: str


# ---- import ------------------------------------------------------------------------------------


class ImportProblem(BaseModel):
    resource: str
    row: int = Field(description="1-based data row; for CSV the line number in the file")
    id: str | None = None
    field: str | None = None
    message: str


class ResourceSummary(BaseModel):
    rows: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0


class IssuedDeviceCredential(IssuedCredential):
    device: str


class ImportReport(BaseModel):
    ok: bool
    dry_run: bool
    mode: Literal["create", "upsert"]
    applied: bool = Field(description="Whether the registry was changed (all rows, or none)")
    problems: list[ImportProblem]
    summary: dict[str, ResourceSummary]
    credentials: list[IssuedDeviceCredential] = Field(
        default_factory=list, description="Secrets of the devices created: shown once"
    )


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    registry_revision: int
