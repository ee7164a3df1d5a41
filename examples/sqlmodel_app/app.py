"""A small SQLModel application on atom_async_db: async routes on ``get_async_db``, sync
``def`` routes on the legacy ``get_db``, and a legacy service called from async code
through ``run_legacy``; every session is SQLModel's, so ``session.exec()`` works
everywhere. Its tests (``test_app.py``) run on the pytest plugin's fixtures.
"""

# (No ``from __future__ import annotations``: SQLModel reads the annotations at runtime.)
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.orm import selectinload
from sqlmodel import Field, Relationship, Session, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

import atom_async_db
from atom_async_db.fastapi import lifespan
from sync_compat import get_db, get_db_session, run_legacy

# The one line: every session the library hands out is SQLModel's (sync ones too).
atom_async_db.configure(async_session_class=AsyncSession)

# AsyncDB's twin, annotated with SQLModel's AsyncSession so that type checkers see exec().
DB = Annotated[AsyncSession, Depends(atom_async_db.get_async_db, scope="function")]
SyncDB = Annotated[Session, Depends(get_db)]


class Team(SQLModel, table=True):
    __tablename__ = "sqlmodel_app_teams"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    heroes: list["Hero"] = Relationship(back_populates="team")


class Hero(SQLModel, table=True):
    __tablename__ = "sqlmodel_app_heroes"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    team_id: int | None = Field(default=None, foreign_key="sqlmodel_app_teams.id")
    team: Team | None = Relationship(back_populates="heroes")


class TeamOut(SQLModel):
    id: int
    name: str
    heroes: list[str]


app = FastAPI(lifespan=lifespan)


@app.post("/teams", status_code=201)
async def create_team(name: str, db: DB) -> Team:
    team = Team(name=name)
    db.add(team)
    await db.commit()
    return team


@app.get("/teams/{team_id}")
async def get_team(team_id: int, db: DB) -> TeamOut:
    query = select(Team).where(Team.id == team_id).options(selectinload(Team.heroes))
    team = (await db.exec(query)).first()
    if team is None or team.id is None:
        raise HTTPException(404, "no such team")
    return TeamOut(id=team.id, name=team.name, heroes=sorted(h.name for h in team.heroes))


@app.post("/heroes", status_code=201)
def create_hero(name: str, team_id: int, db: SyncDB) -> Hero:
    hero = Hero(name=name, team_id=team_id)
    db.add(hero)
    db.commit()
    return hero


@app.get("/heroes")
def list_heroes(db: SyncDB) -> list[dict[str, str | None]]:
    heroes = db.exec(select(Hero).order_by(Hero.name)).all()
    return [{"name": h.name, "team": h.team.name if h.team else None} for h in heroes]


def roster(team_name: str) -> list[str]:
    """A legacy service: sync code on the seed's ``get_db_session()``."""
    with get_db_session() as db:
        team = db.exec(select(Team).where(Team.name == team_name)).one()
        return sorted(hero.name for hero in team.heroes)  # a lazy load, in sync code


@app.get("/teams/by-name/{team_name}/roster")
async def get_roster(team_name: str) -> list[str]:
    return await run_legacy(roster, team_name)
