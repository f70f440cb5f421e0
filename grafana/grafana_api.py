"""The Grafana calls sync makes, as one narrow interface, and its grafana-client implementation.

Grafana cannot run where the tests run, so sync's decisions live in a pure plan
(grafana/sync.py) and everything that talks HTTP is here, one method per API call, nothing
decided. ``GrafanaClientAdapter`` wraps ``grafana_client.GrafanaApi`` (grafana-client 3.11.2,
requests-based) authenticated as a Grafana server admin (basic auth: the organisation and admin
user APIs accept nothing else). Organisation-scoped calls (data sources, folders, dashboards)
send ``X-Grafana-Org-Id`` per request rather than switching the user's current organisation.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

Json = dict[str, Any]


class GrafanaAPI(Protocol):
    def me(self) -> str: ...
    def orgs(self) -> list[Json]: ...
    def create_org(self, name: str) -> int: ...
    def rename_org(self, org_id: int, name: str) -> None: ...
    def org_members(self, org_id: int) -> list[Json]: ...
    def add_org_member(self, org_id: int, login: str, role: str) -> None: ...
    def set_org_role(self, org_id: int, user_id: int, role: str) -> None: ...
    def remove_org_member(self, org_id: int, user_id: int) -> None: ...
    def find_user(self, login: str) -> Json | None: ...
    def user_orgs(self, user_id: int) -> list[Json]: ...
    def create_user(self, login: str, email: str, name: str, password: str, org_id: int) -> int: ...
    def datasource(self, org_id: int, uid: str) -> Json | None: ...
    def create_datasource(self, org_id: int, body: Json) -> None: ...
    def update_datasource(self, org_id: int, uid: str, body: Json) -> None: ...
    def folder(self, org_id: int, uid: str) -> Json | None: ...
    def create_folder(self, org_id: int, uid: str, title: str) -> None: ...
    def dashboards(self, org_id: int, tag: str) -> list[Json]: ...
    def dashboard(self, org_id: int, uid: str) -> Json | None: ...
    def save_dashboard(self, org_id: int, dashboard: Json, folder_uid: str) -> None: ...
    def delete_dashboard(self, org_id: int, uid: str) -> None: ...
    def org_preferences(self, org_id: int) -> Json: ...
    def set_home_dashboard(self, org_id: int, uid: str) -> None: ...


class GrafanaClientAdapter:
    """``GrafanaAPI`` over grafana-client: ``GrafanaClientAdapter(GrafanaApi.from_url(url))``."""

    def __init__(self, api: Any) -> None:
        # Imported here: only the apply step needs grafana-client installed.
        from grafana_client.client import GrafanaClientError

        self.api = api
        self._not_found = GrafanaClientError

    def _org(self, org_id: int) -> dict[str, str]:
        return {"X-Grafana-Org-Id": str(org_id)}

    def _or_none(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except self._not_found as exc:
            if getattr(exc, "status_code", None) == 404:
                return None
            raise

    def me(self) -> str:
        return str(self.api.user.get_actual_user()["login"])

    def orgs(self) -> list[Json]:
        return list(self.api.organizations.list_organization())

    def create_org(self, name: str) -> int:
        return int(self.api.organization.create_organization({"name": name})["orgId"])

    def rename_org(self, org_id: int, name: str) -> None:
        self.api.organizations.update_organization(org_id, {"name": name})

    def org_members(self, org_id: int) -> list[Json]:
        return list(self.api.organizations.organization_user_list(org_id))

    def add_org_member(self, org_id: int, login: str, role: str) -> None:
        self.api.organizations.organization_user_add(org_id, {"loginOrEmail": login, "role": role})

    def set_org_role(self, org_id: int, user_id: int, role: str) -> None:
        self.api.organizations.organization_user_update(org_id, user_id, role)

    def remove_org_member(self, org_id: int, user_id: int) -> None:
        self.api.organizations.organization_user_delete(org_id, user_id)

    def find_user(self, login: str) -> Json | None:
        path = f"/users/lookup?loginOrEmail={quote(login, safe='')}"
        return self._or_none(self.api.client.GET, path)

    def user_orgs(self, user_id: int) -> list[Json]:
        return list(self.api.users.get_user_organisations(user_id))

    def create_user(self, login: str, email: str, name: str, password: str, org_id: int) -> int:
        body = {"login": login, "email": email, "name": name, "password": password, "OrgId": org_id}
        return int(self.api.admin.create_user(body)["id"])

    def datasource(self, org_id: int, uid: str) -> Json | None:
        client = self.api.client
        return self._or_none(client.GET, f"/datasources/uid/{uid}", headers=self._org(org_id))

    def create_datasource(self, org_id: int, body: Json) -> None:
        self.api.client.POST("/datasources", json=body, headers=self._org(org_id))

    def update_datasource(self, org_id: int, uid: str, body: Json) -> None:
        self.api.client.PUT(f"/datasources/uid/{uid}", json=body, headers=self._org(org_id))

    def folder(self, org_id: int, uid: str) -> Json | None:
        return self._or_none(self.api.client.GET, f"/folders/{uid}", headers=self._org(org_id))

    def create_folder(self, org_id: int, uid: str, title: str) -> None:
        body = {"title": title, "uid": uid}
        self.api.client.POST("/folders", json=body, headers=self._org(org_id))

    def dashboards(self, org_id: int, tag: str) -> list[Json]:
        path = f"/search?type=dash-db&tag={tag}&limit=5000"
        return list(self.api.client.GET(path, headers=self._org(org_id)))

    def dashboard(self, org_id: int, uid: str) -> Json | None:
        path = f"/dashboards/uid/{uid}"
        return self._or_none(self.api.client.GET, path, headers=self._org(org_id))

    def save_dashboard(self, org_id: int, dashboard: Json, folder_uid: str) -> None:
        body = {"dashboard": dashboard, "folderUid": folder_uid, "overwrite": True}
        self.api.client.POST("/dashboards/db", json=body, headers=self._org(org_id))

    def delete_dashboard(self, org_id: int, uid: str) -> None:
        self.api.client.DELETE(f"/dashboards/uid/{uid}", headers=self._org(org_id))

    def org_preferences(self, org_id: int) -> Json:
        prefs = self.api.client.GET("/org/preferences", headers=self._org(org_id))
        return dict(prefs or {})

    def set_home_dashboard(self, org_id: int, uid: str) -> None:
        # PATCH changes only the keys sent (PUT would reset the theme, time zone, ...).
        body = {"homeDashboardUID": uid}
        self.api.client.PATCH("/org/preferences", json=body, headers=self._org(org_id))
