"""``weijian grafana sync``: one Grafana organisation per tenant, reading only its own data.

For each tenant (grafana/tenants.py) sync makes sure that

* InfluxDB has the tenant's database ``weijian_t_<tenant>`` and a user ``grafana_t_<tenant>``
  with READ on that database and no other privilege (1.x; for 2.x it prints the ``influx``
  commands that create the bucket, DBRP mapping and read-only v1 authorisation);
* Grafana has an organisation ``<name> [<tenant>]`` with a data source (uid
  ``weijian-tenant-influxdb``) logging in as that user, a folder ``Weijian`` holding the per-kind
  dashboards of the kinds the tenant has (built for the tenant database: no tenant or region
  variables), the first of them as the organisation's home dashboard (otherwise the server-wide
  home, the agency wall, would greet tenants with panels whose data source their organisation
  does not have), and the tenant's people as Viewers of that organisation and of no other.

Three steps, so that the decisions are testable without a Grafana: ``observe`` reads the current
state through narrow interfaces, ``plan`` (pure) compares it with the wanted state and lists the
actions, ``apply`` performs them one call each. Idempotent: run twice, the second plan is empty.
Nothing is ever deleted except Weijian's own dashboards of kinds a tenant no longer has; memberships
that would need a person's higher role taken away are reported as conflicts, not changed.
"""

from __future__ import annotations

import logging
import secrets as _secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grafana.build import tenant_dashboards
from grafana.common import TAG, TENANT_DS
from grafana.grafana_api import GrafanaAPI, GrafanaClientAdapter
from grafana.influx_admin import InfluxV1
from grafana.tenants import (
    DEFAULT_TENANT_DATABASE_PREFIX,
    VIEWER,
    TenantSpec,
    credentials_fingerprint,
    derive_password,
    influx_user,
    org_name,
    org_tenant,
    tenant_database,
)
from protocols.influx.schema import quote_ident

log = logging.getLogger(__name__)
Json = dict[str, Any]
_VOLATILE = ("id", "version")  # what Grafana adds to a stored dashboard


@dataclass(frozen=True, slots=True)
class SyncSettings:
    secret: str  # derives every tenant's InfluxDB password (tenants.derive_password)
    influx_url: str = "http://influxdb:8086"  # InfluxDB as Grafana's server reaches it
    database_prefix: str = DEFAULT_TENANT_DATABASE_PREFIX
    folder_uid: str = "weijian"
    folder_title: str = "Weijian"
    influx_org: str = "weijian"  # 2.x: the organisation in the printed commands
    raw_retention: str = "180d"  # 2.x: the bucket retention in the printed commands


# ---- observed state ------------------------------------------------------------------------


@dataclass(slots=True)
class InfluxObserved:
    version_kind: str  # "1.x" | "2.x" | "3.x"
    databases: frozenset[str] = frozenset()
    users: dict[str, bool] = field(default_factory=dict)  # name → admin
    grants: dict[str, dict[str, str]] = field(default_factory=dict)  # user → db → privilege
    password_ok: dict[str, bool] = field(default_factory=dict)


@dataclass(slots=True)
class OrgObserved:
    id: int
    name: str
    members: dict[str, Json]  # login → {"userId", "role"}
    datasource: Json | None
    folder: bool
    dashboards: dict[str, Json]  # uid → {"dashboard": ..., "folderUid": ...}
    home: str = ""  # the organisation's home dashboard uid ("" for the server's default)
    # False when sync's own user is not a member: Grafana refuses that organisation's data
    # sources, folders and dashboards to it, so they were not read (see _plan_org).
    readable: bool = True


@dataclass(slots=True)
class UserObserved:
    id: int
    login: str
    is_admin: bool
    orgs: dict[int, str]  # org id → role


@dataclass(slots=True)
class GrafanaObserved:
    me: str
    orgs: dict[str, OrgObserved]  # tenant id → its organisation
    users: dict[str, UserObserved]  # login → user (the viewers sync manages)


def observe_influx(
    influx: InfluxV1, tenants: Sequence[TenantSpec], settings: SyncSettings
) -> InfluxObserved:
    kind = influx.version_kind()
    passwords = {
        influx_user(t.id): influx.can_login(
            influx_user(t.id), derive_password(settings.secret, t.id)
        )
        for t in tenants
    }
    if kind != "1.x":
        return InfluxObserved(kind, password_ok=passwords)
    users = influx.users()
    grants = {u: influx.grants(u) for u in (influx_user(t.id) for t in tenants) if u in users}
    return InfluxObserved(kind, frozenset(influx.databases()), users, grants, passwords)


def observe_grafana(
    api: GrafanaAPI, tenants: Sequence[TenantSpec], settings: SyncSettings
) -> GrafanaObserved:
    wanted = {t.id for t in tenants}
    me = api.me()
    orgs: dict[str, OrgObserved] = {}
    for org in api.orgs():
        tenant = org_tenant(org["name"])
        if tenant not in wanted or tenant in orgs:
            continue
        oid = int(org["id"])
        members = {
            m["login"]: {"userId": m["userId"], "role": m["role"]} for m in api.org_members(oid)
        }
        if me not in members:  # X-Grafana-Org-Id of a non-member: Grafana answers 401
            orgs[tenant] = OrgObserved(oid, org["name"], members, None, False, {}, readable=False)
            continue
        dashboards = {}
        for hit in api.dashboards(oid, TAG):
            stored = api.dashboard(oid, hit["uid"])
            if stored is not None:
                folder_uid = stored.get("meta", {}).get("folderUid", hit.get("folderUid", ""))
                dashboards[hit["uid"]] = {"dashboard": stored["dashboard"], "folderUid": folder_uid}
        orgs[tenant] = OrgObserved(
            oid,
            org["name"],
            members,
            api.datasource(oid, TENANT_DS.uid),
            api.folder(oid, settings.folder_uid) is not None,
            dashboards,
            str(api.org_preferences(oid).get("homeDashboardUID") or ""),
        )
    users: dict[str, UserObserved] = {}
    for login in sorted({v.login for t in tenants for v in t.viewers}):
        found = api.find_user(login)
        if found is None:
            continue
        uid = int(found["id"])
        roles = {int(o["orgId"]): o["role"] for o in api.user_orgs(uid)}
        users[login] = UserObserved(uid, login, bool(found.get("isGrafanaAdmin")), roles)
    return GrafanaObserved(me, orgs, users)


# ---- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    """One change. ``args`` never holds a secret: apply derives passwords from the settings."""

    op: str
    tenant: str
    detail: str
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, name: str) -> Any:
        return dict(self.args)[name]


class Lines(list[str]):
    """A list of report lines that prints as one line each (``print(plan.describe())``)."""

    def __str__(self) -> str:
        return "\n".join(self)


@dataclass(slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)  # InfluxDB 2.x commands for the operator

    @property
    def empty(self) -> bool:
        return not self.actions and not self.manual

    def describe(self) -> Lines:
        lines = [f"{a.tenant}: {a.op}: {a.detail}" for a in self.actions]
        lines += [f"CONFLICT: {c}" for c in self.conflicts]
        lines += [f"MANUAL: {m}" for m in self.manual]
        return Lines(lines or ["nothing to do"])


def desired_datasource(spec: TenantSpec, settings: SyncSettings) -> Json:
    """The tenant's data source without its password (``secureJsonData`` is added by apply)."""
    user = influx_user(spec.id)
    return {
        "access": "proxy",
        "basicAuth": True,
        "basicAuthUser": user,
        "isDefault": True,
        "jsonData": {
            "dbName": tenant_database(spec.id, settings.database_prefix),
            "httpMode": "POST",
            "timeInterval": "10s",
            "version": "InfluxQL",
            "weijianCredentials": credentials_fingerprint(
                user, derive_password(settings.secret, spec.id)
            ),
        },
        "name": "Weijian InfluxDB",
        "type": "influxdb",
        "uid": TENANT_DS.uid,
        "url": settings.influx_url,
    }


def _datasource_matches(observed: Json, desired: Json) -> bool:
    for key, value in desired.items():
        if key == "jsonData":
            seen = observed.get("jsonData") or {}
            if any(seen.get(k) != v for k, v in value.items()):
                return False
        elif observed.get(key) != value:
            return False
    return True


def _dashboard_matches(stored: Json, wanted: Json) -> bool:
    """Whether Grafana's stored copy has every key we would save, with the same value (keys
    Grafana adds, and the ``id``/``version`` it manages, do not count; so a top-level key the
    builders stop emitting lingers in Grafana until the dashboard changes otherwise)."""
    return all(stored.get(k) == v for k, v in wanted.items() if k not in _VOLATILE)


def _plan_influx(
    spec: TenantSpec, seen: InfluxObserved, settings: SyncSettings, plan: Plan
) -> None:
    user = influx_user(spec.id)
    db = tenant_database(spec.id, settings.database_prefix)

    def add(op: str, detail: str, **args: Any) -> None:
        plan.actions.append(Action(op, spec.id, detail, tuple(sorted(args.items()))))

    if seen.version_kind != "1.x":
        if not seen.password_ok.get(user):
            plan.manual += [
                f"{spec.id}: influx bucket create --org {settings.influx_org} --name {db} "
                f"--retention {settings.raw_retention}",
                f"{spec.id}: influx v1 dbrp create --org {settings.influx_org} "
                f"--bucket-id <id of {db}> --db {db} --rp raw --default",
                f"{spec.id}: influx v1 auth create --org {settings.influx_org} --username {user} "
                f"--password <tenants.derive_password(secret, {spec.id!r})> "
                f"--read-bucket <id of {db}>",
            ]
        return
    if db not in seen.databases:
        add("influx.create_database", db, database=db)
    if user not in seen.users:
        add("influx.create_user", user, user=user)
    else:
        if seen.users[user]:
            add("influx.revoke_admin", f"{user} must not be an InfluxDB admin", user=user)
        if not seen.password_ok.get(user):
            add("influx.set_password", f"{user} (derived from the sync secret)", user=user)
    grants = seen.grants.get(user, {})
    for other, privilege in sorted(grants.items()):
        if other != db or privilege not in ("READ",):
            add("influx.revoke", f"{privilege} on {other} from {user}", user=user, database=other)
    if grants.get(db) != "READ":
        add("influx.grant_read", f"READ on {db} to {user}", user=user, database=db)


def _plan_org(
    spec: TenantSpec,
    seen: GrafanaObserved,
    settings: SyncSettings,
    plan: Plan,
    claimed: Mapping[str, str],
) -> None:
    org = seen.orgs.get(spec.id)
    name = org_name(spec)

    def add(op: str, detail: str, **args: Any) -> None:
        plan.actions.append(Action(op, spec.id, detail, tuple(sorted(args.items()))))

    if org is None:
        add("grafana.create_org", name, name=name)
    elif org.name != name:
        add("grafana.rename_org", f"{org.name!r} → {name!r}", name=name)
    members = org.members if org else {seen.me: {"userId": 0, "role": "Admin"}}
    if seen.me not in members:
        add(
            "grafana.add_member", f"{seen.me} as Admin (sync needs it)", login=seen.me, role="Admin"
        )
    elif members[seen.me]["role"] != "Admin":
        add("grafana.set_role", f"{seen.me} → Admin (sync needs it)", login=seen.me, role="Admin")
    if org is not None and not org.readable:
        plan.manual.append(
            f"{spec.id}: {seen.me} was not a member of {name!r}, so its contents could not be "
            "read; run `weijian grafana sync` again once it is (this run adds it)"
        )
        return
    if not (org and org.folder):
        add("grafana.create_folder", settings.folder_title, uid=settings.folder_uid)
    wanted_ds = desired_datasource(spec, settings)
    if org is None or org.datasource is None:
        add("grafana.create_datasource", f"{wanted_ds['name']} → {wanted_ds['jsonData']['dbName']}")
    elif not _datasource_matches(org.datasource, wanted_ds):
        add("grafana.update_datasource", f"{wanted_ds['name']} → {wanted_ds['jsonData']['dbName']}")
    kinds = None if spec.kinds is None else sorted(spec.kinds)
    wanted = {d["uid"]: d for d in tenant_dashboards(kinds)}
    stored = org.dashboards if org else {}
    for uid, dashboard in wanted.items():
        have = stored.get(uid)
        if (
            have is None
            or not _dashboard_matches(have["dashboard"], dashboard)
            or have["folderUid"] != settings.folder_uid
        ):
            add("grafana.save_dashboard", dashboard["title"], uid=uid)
    for uid in sorted(set(stored) - set(wanted)):
        add("grafana.delete_dashboard", f"{uid} (the tenant has no such devices)", uid=uid)
    if wanted:
        home = next(iter(wanted))  # tenant_dashboards' order: the first kind the tenant has
        if org is None or org.home != home:
            add("grafana.set_home", f"home dashboard {home}", uid=home)
    for viewer in spec.viewers:
        if claimed.get(viewer.login, spec.id) != spec.id:
            plan.conflicts.append(
                f"{viewer.login} is listed for tenants {claimed[viewer.login]} and {spec.id}"
            )
            continue
        user = seen.users.get(viewer.login)
        if user is None:
            add("grafana.create_user", viewer.login, login=viewer.login)
            add("grafana.set_role", f"{viewer.login} → {VIEWER}", login=viewer.login, role=VIEWER)
            continue
        if user.is_admin:
            plan.conflicts.append(
                f"{viewer.login} is a Grafana server admin: not made a tenant viewer"
            )
            continue
        here = org.id if org else None
        if here is None or here not in user.orgs:
            add(
                "grafana.add_member", f"{viewer.login} as {VIEWER}", login=viewer.login, role=VIEWER
            )
        elif user.orgs[here] != VIEWER:
            plan.conflicts.append(
                f"{viewer.login} is {user.orgs[here]} of {name}: Weijian makes tenants Viewers; "
                "change the role by hand if that is not intended"
            )
        for other_id, role in sorted(user.orgs.items()):
            if other_id == here:
                continue
            if role == VIEWER:
                add(
                    "grafana.remove_member",
                    f"{viewer.login} from organisation {other_id} (a tenant sees only its own)",
                    login=viewer.login,
                    org_id=other_id,
                )
            else:
                plan.conflicts.append(
                    f"{viewer.login} is {role} of organisation {other_id}: a tenant viewer should "
                    "belong to its tenant's organisation only; not changed"
                )


def plan(
    tenants: Sequence[TenantSpec],
    grafana_seen: GrafanaObserved,
    influx_seen: InfluxObserved,
    settings: SyncSettings,
) -> Plan:
    """The actions that bring Grafana and InfluxDB to the wanted state (pure)."""
    out = Plan()
    seen_ids: set[str] = set()
    claimed: dict[str, str] = {}
    for spec in tenants:
        if spec.id in seen_ids:
            out.conflicts.append(f"tenant {spec.id} is listed twice")
            continue
        seen_ids.add(spec.id)
        _plan_influx(spec, influx_seen, settings, out)
        _plan_org(spec, grafana_seen, settings, out, claimed)
        for viewer in spec.viewers:
            claimed.setdefault(viewer.login, spec.id)
    return out


# ---- apply ---------------------------------------------------------------------------------


@dataclass(slots=True)
class SyncReport:
    plan: Plan
    applied: list[Action] = field(default_factory=list)
    initial_passwords: dict[str, str] = field(default_factory=dict)  # new viewers: hand over once


def _influx_statement(action: Action, settings: SyncSettings) -> str:
    user = quote_ident(action.arg("user")) if action.op != "influx.create_database" else ""
    if action.op == "influx.create_database":
        return f"CREATE DATABASE {quote_ident(action.arg('database'))}"
    password = derive_password(settings.secret, action.tenant)  # URL-safe: no quotes to escape
    if action.op == "influx.create_user":
        return f"CREATE USER {user} WITH PASSWORD '{password}'"
    if action.op == "influx.set_password":
        return f"SET PASSWORD FOR {user} = '{password}'"
    if action.op == "influx.revoke_admin":
        return f"REVOKE ALL PRIVILEGES FROM {user}"
    if action.op == "influx.revoke":
        return f"REVOKE ALL ON {quote_ident(action.arg('database'))} FROM {user}"
    if action.op == "influx.grant_read":
        return f"GRANT READ ON {quote_ident(action.arg('database'))} TO {user}"
    raise ValueError(f"unknown InfluxDB action {action.op}")


def apply(
    the_plan: Plan,
    tenants: Sequence[TenantSpec],
    api: GrafanaAPI,
    influx: InfluxV1,
    settings: SyncSettings,
    grafana_seen: GrafanaObserved,
    *,
    new_password: Callable[[], str] = lambda: _secrets.token_urlsafe(18),
) -> SyncReport:
    """Perform the plan's actions in order (conflicts and manual steps are only reported)."""
    report = SyncReport(the_plan)
    specs = {t.id: t for t in tenants}
    org_ids = {tid: org.id for tid, org in grafana_seen.orgs.items()}
    user_ids = {login: u.id for login, u in grafana_seen.users.items()}

    def user_id(org_id: int, login: str) -> int:
        if login not in user_ids:
            found = api.find_user(login)
            if found is None:
                raise LookupError(f"Grafana user {login!r} not found")
            user_ids[login] = int(found["id"])
        return user_ids[login]

    for action in the_plan.actions:
        spec = specs[action.tenant]
        log.info("grafana sync: %s: %s: %s", action.tenant, action.op, action.detail)
        if action.op.startswith("influx."):
            influx.query(_influx_statement(action, settings))
        elif action.op == "grafana.create_org":
            org_ids[spec.id] = api.create_org(action.arg("name"))
        else:
            org = org_ids[spec.id]
            if action.op == "grafana.rename_org":
                api.rename_org(org, action.arg("name"))
            elif action.op == "grafana.add_member":
                api.add_org_member(org, action.arg("login"), action.arg("role"))
            elif action.op == "grafana.set_role":
                login = action.arg("login")
                api.set_org_role(org, user_id(org, login), action.arg("role"))
            elif action.op == "grafana.remove_member":
                api.remove_org_member(action.arg("org_id"), user_id(org, action.arg("login")))
            elif action.op == "grafana.create_folder":
                api.create_folder(org, action.arg("uid"), settings.folder_title)
            elif action.op in ("grafana.create_datasource", "grafana.update_datasource"):
                body = desired_datasource(spec, settings)
                body["secureJsonData"] = {
                    "basicAuthPassword": derive_password(settings.secret, spec.id)
                }
                if action.op == "grafana.create_datasource":
                    api.create_datasource(org, body)
                else:
                    api.update_datasource(org, TENANT_DS.uid, body)
            elif action.op == "grafana.save_dashboard":
                kinds = None if spec.kinds is None else sorted(spec.kinds)
                (dashboard,) = [
                    d for d in tenant_dashboards(kinds) if d["uid"] == action.arg("uid")
                ]
                api.save_dashboard(org, dashboard, settings.folder_uid)
            elif action.op == "grafana.delete_dashboard":
                api.delete_dashboard(org, action.arg("uid"))
            elif action.op == "grafana.set_home":
                api.set_home_dashboard(org, action.arg("uid"))
            elif action.op == "grafana.create_user":
                (viewer,) = [v for v in spec.viewers if v.login == action.arg("login")]
                password = new_password()
                user_ids[viewer.login] = api.create_user(
                    viewer.login, viewer.email, viewer.name or viewer.login, password, org
                )
                report.initial_passwords[viewer.login] = password
            else:
                raise ValueError(f"unknown action {action.op}")
        report.applied.append(action)
    return report


def _adapter(grafana_client: Any) -> GrafanaAPI:
    """A grafana-client ``GrafanaApi`` is wrapped; anything else must already be a GrafanaAPI."""
    if hasattr(grafana_client, "organizations") and hasattr(grafana_client, "client"):
        return GrafanaClientAdapter(grafana_client)
    return grafana_client  # type: ignore[no-any-return]


def sync(
    grafana_client: Any,
    influx_admin: InfluxV1,
    tenants: Iterable[TenantSpec],
    *,
    secret: str,
    influx_url: str = "http://influxdb:8086",
    database_prefix: str = DEFAULT_TENANT_DATABASE_PREFIX,
    dry_run: bool = False,
    settings: SyncSettings | None = None,
) -> SyncReport:
    """Observe, plan and (unless ``dry_run``) apply. ``grafana_client``: a grafana-client
    ``GrafanaApi`` logged in as a Grafana server admin; ``influx_admin``: an InfluxDB admin."""
    specs = list(tenants)
    cfg = settings or SyncSettings(secret, influx_url, database_prefix)
    api = _adapter(grafana_client)
    grafana_seen = observe_grafana(api, specs, cfg)
    influx_seen = observe_influx(influx_admin, specs, cfg)
    the_plan = plan(specs, grafana_seen, influx_seen, cfg)
    if dry_run:
        return SyncReport(the_plan)
    return apply(the_plan, specs, api, influx_admin, cfg, grafana_seen)
