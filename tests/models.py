"""The models the tests use: the seed guide's ``User`` and ``Post``, table names prefixed so
they never collide with anything else in a shared test database."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "atom_t_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="active")
    version: Mapped[int] = mapped_column(default=1)
    data_count: Mapped[int] = mapped_column(default=0)
    processed: Mapped[bool] = mapped_column(default=False)
    posts: Mapped[list[Post]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Post(Base):
    __tablename__ = "atom_t_posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("atom_t_users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    user: Mapped[User] = relationship(back_populates="posts")
