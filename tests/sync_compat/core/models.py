"""The seed application's models as its code uses them: string ids (``user_id: str``
throughout the guide), ``first_name``, ``status``, ``version``, ``data_count``,
``processed``, ``posts`` and ``user.update(data)``."""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


def _new_id() -> str:
    return str(uuid.uuid4())


class User(Base):
    __tablename__ = "atom_t_seed_users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_new_id)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="active")
    version: Mapped[int] = mapped_column(default=1)
    data_count: Mapped[int] = mapped_column(default=0)
    processed: Mapped[bool] = mapped_column(default=False)
    posts: Mapped[list[Post]] = relationship(back_populates="user", cascade="all, delete-orphan")

    def update(self, data: dict[str, object]) -> None:
        for key, value in data.items():
            setattr(self, key, value)


class Post(Base):
    __tablename__ = "atom_t_seed_posts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("atom_t_seed_users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    user: Mapped[User] = relationship(back_populates="posts")
