"""The seed guide's user API, async, as a small application with its tests (``test_app.py``),
which use the pytest plugin shipped with atom_async_db."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from atom_async_db import get_async_db_session
from atom_async_db.fastapi import AsyncDB, lifespan
from sync_compat import get_db_session


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "example_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str | None] = mapped_column(String(100))


class UserIn(BaseModel):
    email: str
    name: str | None = None


app = FastAPI(lifespan=lifespan)


@app.post("/users", status_code=201)
async def create_user(data: UserIn, db: AsyncDB) -> dict[str, object]:
    user = User(email=data.email, name=data.name)
    db.add(user)
    try:
        await db.commit()
    except IntegrityError:
        raise HTTPException(status_code=409, detail=f"{data.email} is taken") from None
    return {"id": user.id, "email": user.email}


@app.get("/users/{user_id}")
async def get_user(user_id: int, db: AsyncDB) -> dict[str, object]:
    user = await db.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail=f"user {user_id} not found")
    return {"id": user.id, "email": user.email, "name": user.name}


class UserService:
    """The service layer: opens its own session (it joins the caller's, if any)."""

    async def rename(self, user_id: int, name: str) -> None:
        async with get_async_db_session() as db:
            user = await db.get(User, user_id)
            if user is None:
                raise LookupError(user_id)
            user.name = name


def legacy_find_emails() -> list[str]:
    """Legacy sync code, seed style (called through ``sync_compat.run_legacy`` from async
    code, or directly from sync code)."""
    with get_db_session() as db:
        return list(db.scalars(select(User.email).order_by(User.email)))
