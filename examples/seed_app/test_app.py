"""The example application's tests, on the plugin's fixtures: each test runs in a
transaction rolled back at its end, and the route, the service and the legacy code all
join it, without any dependency override."""

from __future__ import annotations

from app import User, UserService, app, legacy_find_emails
from sqlalchemy import select

from atom_async_db.testing import client
from sync_compat import run_legacy


async def test_create_then_get_a_user(async_db_session):
    async with client(app) as http:
        created = await http.post("/users", json={"email": "ada@example.com", "name": "Ada"})
        assert created.status_code == 201
        fetched = await http.get(f"/users/{created.json()['id']}")
    assert fetched.json()["name"] == "Ada"


async def test_a_taken_email_is_a_409_and_the_test_goes_on(async_db_session):
    async with client(app) as http:
        assert (await http.post("/users", json={"email": "ada@example.com"})).status_code == 201
        assert (await http.post("/users", json={"email": "ada@example.com"})).status_code == 409
        assert (await http.post("/users", json={"email": "bob@example.com"})).status_code == 201
    assert await run_legacy(legacy_find_emails) == ["ada@example.com", "bob@example.com"]


async def test_the_service_sees_what_the_route_wrote(async_db_session):
    async with client(app) as http:
        user_id = (await http.post("/users", json={"email": "cy@example.com"})).json()["id"]
    await UserService().rename(user_id, "Cy")
    assert (await async_db_session.get(User, user_id)).name == "Cy"


async def test_nothing_from_the_other_tests_is_left(async_db_session):
    assert (await async_db_session.scalars(select(User))).all() == []


def test_legacy_code_in_a_sync_test(db_session):
    db_session.add(User(email="dee@example.com"))
    db_session.commit()  # releases the test's savepoint; rolled back after the test
    assert legacy_find_emails() == ["dee@example.com"]
