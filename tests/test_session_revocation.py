"""A password change signs the user out: its JWTs issued before the change are refused.

``users.password_changed_at`` (migration 0004) is stamped wherever a password is set
(``gateway.security.set_password``); ``authenticate`` refuses a JWT whose ``iat`` is in an earlier
second, with 401 ``token issued before the password was changed; sign in again``. API tokens are
separate credentials and survive a password change. Deactivation, deletion and role changes need
no stamp: the user row is read on every request.

Most tests first *age* the account (created an hour ago) and mint its "old" JWT minutes ago, so
that the old token is in an earlier second than the change whatever the clock says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from alembic import command
from argon2 import PasswordHasher
from sqlalchemy import create_engine, insert, select, text

from gateway.registry.database import Registry, alembic_config, sqlite_url
from gateway.registry.models import ApiToken, User
from gateway.security import authenticate, create_user, issue_access_token
from tests.gateway_fixtures import *  # noqa: F403
from tests.gateway_fixtures import FAST_HASHER, JWT_SECRET, PASSWORD, World
from tests.test_gateway_crud import assert_error

NEW_PASSWORD = "a brand new passphrase"
SIGN_IN_AGAIN = "token issued before the password was changed; sign in again"


def _age(world: World, name: str, hours: float = 1) -> None:
    """Make ``name``'s account (and its password) ``hours`` older."""
    with world.ctx.registry.session() as session, session.begin():
        user = session.get(User, world.users[name])
        assert user is not None
        assert user.password_changed_at is not None
        user.created_at -= timedelta(hours=hours)
        user.password_changed_at -= timedelta(hours=hours)


def _jwt(world: World, name: str, at: datetime | None = None) -> dict[str, str]:
    """A bearer header for ``name`` with a JWT issued at ``at`` (default: now)."""
    with world.ctx.registry.session() as session:
        user = session.get(User, world.users[name])
        assert user is not None
        token = issue_access_token(JWT_SECRET, user, world.ctx.settings.jwt_ttl_s, now=at)
    return {"Authorization": f"Bearer {token}"}


def _changed_at(world: World, name: str) -> datetime | None:
    with world.ctx.registry.session() as session:
        user = session.get(User, world.users[name])
        assert user is not None
        return user.password_changed_at


def _login(world: World, name: str, password: str) -> Any:
    return world.client.post("/auth/token", data={"username": name, "password": password})


def _me(world: World, headers: dict[str, str]) -> Any:
    return world.client.get("/auth/me", headers=headers)


def _refused(response: Any, message: str = SIGN_IN_AGAIN) -> None:
    error = assert_error(response, 401, "unauthorized")
    assert error["message"] == message
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_password_change_refuses_older_jwts_and_a_new_login_works(world: World) -> None:
    for name in ("county102", "county106"):
        _age(world, name)
    ago = datetime.now(UTC) - timedelta(minutes=10)
    old, bystander = _jwt(world, "county102", ago), _jwt(world, "county106", ago)
    assert _me(world, old).status_code == 200
    before = _changed_at(world, "county102")

    uid = world.users["county102"]
    r = world.patch(f"/users/{uid}", "admin", json={"password": NEW_PASSWORD})
    assert r.status_code == 200, r.text
    changed = datetime.fromisoformat(r.json()["password_changed_at"])
    assert before is not None
    assert changed > before
    assert changed == _changed_at(world, "county102")

    _refused(_me(world, old))
    _refused(world.client.get("/sites", headers=old))
    assert _me(world, bystander).status_code == 200  # someone else's password changed

    _refused(_login(world, "county102", PASSWORD), "incorrect username or password")
    r = _login(world, "county102", NEW_PASSWORD)
    assert r.status_code == 200, r.text
    fresh = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert _me(world, fresh).json()["username"] == "county102"
    assert [s["id"] for s in world.client.get("/sites", headers=fresh).json()["items"]] == ["s102"]


def test_a_token_issued_right_after_the_change_works(world: World) -> None:
    """No sleeping: a login (or a minted token) in the very second of the change is accepted."""
    uid = world.users["city"]
    for n in range(3):
        password = f"{NEW_PASSWORD} {n}"
        r = world.patch(f"/users/{uid}", "admin", json={"password": password})
        assert r.status_code == 200, r.text
        login = _login(world, "city", password)
        assert login.status_code == 200, login.text
        token = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assert _me(world, token).status_code == 200
        assert _me(world, _jwt(world, "city")).status_code == 200


def test_iat_is_compared_at_whole_seconds_in_the_users_favour(world: World) -> None:
    _age(world, "county102")
    second = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    with world.ctx.registry.session() as session, session.begin():
        user = session.get(User, world.users["county102"])
        assert user is not None
        user.password_changed_at = second + timedelta(milliseconds=750)

    after = _jwt(world, "county102", second + timedelta(milliseconds=900))
    assert _me(world, after).status_code == 200
    # Issued 0.65 s before the change but in the same second: iat cannot tell, so it passes.
    same_second = _jwt(world, "county102", second + timedelta(milliseconds=100))
    assert _me(world, same_second).status_code == 200
    _refused(_me(world, _jwt(world, "county102", second - timedelta(milliseconds=1))))
    _refused(_me(world, _jwt(world, "county102", second - timedelta(minutes=1))))


def test_api_tokens_survive_a_password_change_and_are_revoked_one_by_one(world: World) -> None:
    _age(world, "county102")
    old = _jwt(world, "county102", datetime.now(UTC) - timedelta(minutes=10))
    created = world.client.post("/auth/api-tokens", headers=old, json={"name": "nightly"})
    assert created.status_code == 201, created.text
    script = {"Authorization": f"Bearer {created.json()['token']}"}

    uid = world.users["county102"]
    assert world.patch(f"/users/{uid}", "admin", json={"password": NEW_PASSWORD}).status_code == 200
    _refused(_me(world, old))
    me = _me(world, script)
    assert me.status_code == 200, me.text
    assert me.json()["via"] == "api_token"

    # An admin reviews the account's API tokens and revokes the one it does not trust.
    listed = world.get("/auth/api-tokens", "admin", params={"all": True}).json()["items"]
    (row,) = [t for t in listed if t["user_id"] == uid]
    assert world.delete(f"/auth/api-tokens/{row['id']}", "admin").status_code == 200
    _refused(_me(world, script), "invalid or revoked API token")


def test_an_admin_changing_its_own_password_is_signed_out_too(world: World) -> None:
    _age(world, "admin")
    world.headers["admin"] = _jwt(world, "admin", datetime.now(UTC) - timedelta(minutes=10))
    r = world.patch(f"/users/{world.users['admin']}", "admin", json={"password": NEW_PASSWORD})
    assert r.status_code == 200, r.text  # the change itself goes through
    _refused(world.get("/users", "admin"))
    login = _login(world, "admin", NEW_PASSWORD)
    assert login.status_code == 200, login.text


def test_other_changes_keep_tokens_and_apply_on_the_next_request(world: World) -> None:
    _age(world, "county102")
    old = _jwt(world, "county102", datetime.now(UTC) - timedelta(minutes=10))
    uid = world.users["county102"]
    stamp = _changed_at(world, "county102")

    def sites() -> list[str]:
        r = world.client.get("/sites", headers=old)
        assert r.status_code == 200, r.text
        return sorted(s["id"] for s in r.json()["items"])

    assert sites() == ["s102"]
    world.patch(f"/users/{uid}", "admin", json={"display_name": "Li"})
    world.patch(f"/users/{uid}", "admin", json={"role": "city_admin", "region_codes": ["330100"]})
    assert sites() == ["s102", "s106"]  # the new role and scope, with the same token
    assert _me(world, old).json()["role"] == "city_admin"
    world.patch(
        f"/users/{uid}",
        "admin",
        json={"role": "tenant_user", "region_codes": [], "tenant_id": "water"},
    )
    r = world.client.post("/tenants", headers=old, json={"id": "t2", "name": "T2"})
    assert_error(r, 403, "forbidden")
    assert _changed_at(world, "county102") == stamp  # none of that was a password change

    world.patch(f"/users/{uid}", "admin", json={"active": False})
    _refused(_me(world, old), "this account is no longer active")
    _refused(_login(world, "county102", PASSWORD), "incorrect username or password")


def test_reactivating_with_a_new_password_keeps_old_jwts_out(world: World) -> None:
    _age(world, "county102")
    old = _jwt(world, "county102", datetime.now(UTC) - timedelta(minutes=10))
    uid = world.users["county102"]
    world.patch(f"/users/{uid}", "admin", json={"active": False})
    _refused(_me(world, old), "this account is no longer active")
    world.patch(f"/users/{uid}", "admin", json={"active": True, "password": NEW_PASSWORD})
    _refused(_me(world, old))
    assert _login(world, "county102", NEW_PASSWORD).status_code == 200


def test_a_deleted_user_or_a_new_user_of_the_same_name_cannot_use_an_old_jwt(
    world: World,
) -> None:
    _age(world, "county106")
    old = _jwt(world, "county106", datetime.now(UTC) - timedelta(minutes=10))
    assert world.delete(f"/users/{world.users['county106']}", "admin").status_code == 204
    _refused(_me(world, old), "this account is no longer active")
    world.add_user("county106", "county_admin", ("330106",))  # same name, new row
    _refused(_me(world, old), "this account is no longer active")
    assert _me(world, world.county106).status_code == 200


def test_a_rehash_at_login_is_not_a_password_change(world: World) -> None:
    """Same password, new argon2 parameters: other sessions stay signed in."""
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    with world.ctx.registry.session() as session:
        user = create_user(session, "legacy", PASSWORD, "admin", actor="test", hasher=stronger)
        session.commit()
        world.users["legacy"] = user.id
        old_hash = user.password_hash
    _age(world, "legacy")
    old = _jwt(world, "legacy", datetime.now(UTC) - timedelta(minutes=10))
    stamp = _changed_at(world, "legacy")

    assert _login(world, "legacy", PASSWORD).status_code == 200
    with world.ctx.registry.session() as session:
        row = session.get(User, world.users["legacy"])
        assert row is not None
        assert row.password_hash != old_hash
        assert row.password_changed_at == stamp
    assert _me(world, old).status_code == 200


def test_create_user_stamps_the_password(registry: Registry) -> None:
    with registry.session() as session, session.begin():
        user = create_user(session, "li", PASSWORD, "admin", hasher=FAST_HASHER)
    assert user.password_changed_at is not None
    assert abs(user.password_changed_at - user.created_at) < timedelta(seconds=5)


def test_the_demo_admin_reset_stamps_the_password(registry: Registry, tmp_path: Path) -> None:
    from weijian.demo import demo_admin

    first = demo_admin(registry, tmp_path)
    with registry.session() as session, session.begin():
        row = session.execute(select(User).where(User.username == "admin")).scalar_one()
        row.password_changed_at = datetime.now(UTC) - timedelta(days=1)
    (tmp_path / "admin.credentials").write_text("admin:lost\n")
    second = demo_admin(registry, tmp_path)
    assert second != first
    with registry.session() as session:
        row = session.execute(select(User).where(User.username == "admin")).scalar_one()
        assert row.password_changed_at is not None
        assert datetime.now(UTC) - row.password_changed_at < timedelta(minutes=1)


def test_migration_0004_keeps_existing_users_and_their_tokens(tmp_path: Path) -> None:
    """Existing users get NULL (not recorded): nobody is signed out by the upgrade; and the
    downgrade, even on a connection enforcing foreign keys, keeps the API tokens."""
    url = sqlite_url(tmp_path / "old.db")
    command.upgrade(alembic_config(url), "0003")
    created = datetime.now(UTC) - timedelta(hours=1)
    engine = create_engine(url)
    with engine.begin() as connection:
        users = User.__table__
        connection.execute(
            insert(users).values(
                id=1,
                username="li",
                display_name="",
                password_hash=FAST_HASHER.hash(PASSWORD),
                role="admin",
                region_codes=[],
                active=True,
                created_at=created,
                updated_at=created,
            )
        )
        tokens = ApiToken.__table__
        connection.execute(
            insert(tokens).values(
                user_id=1, name="t", key_id="0" * 12, secret_hash="x", created_at=created
            )
        )
    engine.dispose()

    registry = Registry.open(url)  # migrates to head, with PRAGMA foreign_keys=ON
    try:
        with registry.session() as session:
            user = session.get(User, 1)
            assert user is not None
            assert user.password_changed_at is None
            token = issue_access_token(JWT_SECRET, user, 3600, now=created + timedelta(minutes=1))
            ctx: Any = SimpleNamespace(jwt_secret=JWT_SECRET)
            assert authenticate(session, ctx, token).username == "li"

        with registry.engine.begin() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0003")
        with registry.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM api_tokens")).scalar() == 1
            columns = {row[1] for row in connection.execute(text("PRAGMA table_info(users)"))}
            assert "password_changed_at" not in columns
            assert "password_hash" in columns
    finally:
        registry.close()


@pytest.mark.parametrize("stamp", [None, datetime(2020, 1, 1, tzinfo=UTC)])
def test_user_out_shows_when_the_password_was_set(world: World, stamp: datetime | None) -> None:
    with world.ctx.registry.session() as session, session.begin():
        user = session.get(User, world.users["city"])
        assert user is not None
        user.password_changed_at = stamp
    r = world.get(f"/users/{world.users['city']}", "admin")
    assert r.status_code == 200, r.text
    shown = r.json()["password_changed_at"]
    assert (None if shown is None else datetime.fromisoformat(shown)) == stamp
