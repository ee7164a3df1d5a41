"""Quick start: the async patterns on the embedded SQLite default (no server needed).

Run it with ``make example`` (or ``python examples/quickstart.py``). Set DATABASE_URL to
run the same code on PostgreSQL, e.g. postgresql://postgres@127.0.0.1:5432/test.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import atom_async_db
from atom_async_db import get_async_db_session


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "quickstart_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(100))


class UserService:
    """The seed's service layer, async."""

    async def create_user(self, email: str, name: str) -> User:
        async with get_async_db_session() as db:  # commits on success
            user = User(email=email, first_name=name)
            db.add(user)
            return user

    async def rename(self, user_id: int, name: str) -> bool:
        async with get_async_db_session() as db:
            user = await db.get(User, user_id)
            if user is None:
                return False
            user.first_name = name
            return True


async def main() -> None:
    database = atom_async_db.get_database()  # DATABASE_URL, else ./atom.db (with a warning)
    print(f"database: {database.url}")
    async with database.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)

    service = UserService()
    ada = await service.create_user("ada@example.com", "Ada")
    print(f"created user {ada.id} {ada.email}: readable after the block")
    await service.rename(ada.id, "Ada Lovelace")

    try:
        async with get_async_db_session() as db:
            db.add(User(email="grace@example.com", first_name="Grace"))
            raise ValueError("something went wrong")
    except ValueError:
        print("the failed block was rolled back")

    # 200 concurrent workers, each in its own session.
    await asyncio.gather(*(service.create_user(f"user{i}@example.com", "w") for i in range(200)))

    async with get_async_db_session() as db:
        total = (await db.execute(select(func.count()).select_from(User))).scalar_one()
        renamed = (await db.get(User, ada.id)).first_name  # type: ignore[union-attr]
    print(f"{total} users; user {ada.id} is now {renamed!r}")
    await atom_async_db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
