"""The SQLModel application's tests, on the plugin's fixtures: every test runs in a
transaction rolled back at its end, which the routes and the legacy service join; every
session in it is SQLModel's.

Async tests (``async_db_session``) drive the async routes; sync tests (``db_session``)
drive the ``def`` routes, which FastAPI runs in worker threads: a rolled-back transaction
is either async or sync, and each kind of code joins its own kind.
"""

from __future__ import annotations

from app import Hero, Team, app, roster
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from sqlmodel.ext.asyncio.session import AsyncSession

from atom_async_db.testing import client
from sync_compat import run_legacy


async def test_a_team_and_its_heroes_through_the_async_routes(async_db_session):
    async with client(app) as http:
        team = (await http.post("/teams", params={"name": "Preventers"})).json()
        async_db_session.add_all(
            [Hero(name=name, team_id=team["id"]) for name in ("Rusty-Man", "Deadpond")]
        )
        await async_db_session.commit()  # releases the test's savepoint; rolled back after
        fetched = (await http.get(f"/teams/{team['id']}")).json()
        missing = await http.get("/teams/999999")
    assert fetched == {"id": team["id"], "name": "Preventers", "heroes": ["Deadpond", "Rusty-Man"]}
    assert missing.status_code == 404


async def test_the_legacy_service_reads_what_a_route_wrote(async_db_session):
    async with client(app) as http:
        team = (await http.post("/teams", params={"name": "Z-Force"})).json()
        async_db_session.add(Hero(name="Black Lion", team_id=team["id"]))
        await async_db_session.flush()
        assert (await http.get("/teams/by-name/Z-Force/roster")).json() == ["Black Lion"]
    assert await run_legacy(roster, "Z-Force") == ["Black Lion"]


async def test_the_async_fixture_is_a_sqlmodel_session(async_db_session):
    assert isinstance(async_db_session, AsyncSession)
    async_db_session.add(Team(name="Avengers", heroes=[Hero(name="Spider-Boy")]))
    hero = (await async_db_session.exec(select(Hero))).one()
    assert hero.name == "Spider-Boy"


async def test_nothing_from_the_other_tests_is_left(async_db_session):
    assert (await async_db_session.exec(select(Team))).all() == []


def test_the_sync_routes(db_session):
    assert isinstance(db_session, Session)
    team = Team(name="Preventers")
    db_session.add(team)
    db_session.commit()
    with TestClient(app) as http:
        for name in ("Rusty-Man", "Deadpond"):
            created = http.post("/heroes", params={"name": name, "team_id": team.id})
            assert created.status_code == 201
        listed = http.get("/heroes").json()
    assert listed == [
        {"name": "Deadpond", "team": "Preventers"},
        {"name": "Rusty-Man", "team": "Preventers"},
    ]
    assert roster("Preventers") == ["Deadpond", "Rusty-Man"]
    assert [hero.name for hero in db_session.exec(select(Hero).order_by(Hero.name))] == [
        "Deadpond",
        "Rusty-Man",
    ]


def test_nothing_from_the_sync_test_is_left(db_session):
    assert db_session.exec(select(Hero)).all() == []
