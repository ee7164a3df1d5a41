"""The seed guide's FastAPI code (Pattern 1 and its tests' app), as written there.

Only the import lines differ. ``router`` stands in for Atom's router helpers, which the
guide uses without showing (``not_found_error``, ``success_response``).
"""

# mypy: ignore-errors

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from tests.sync_compat.core.database import get_db
from tests.sync_compat.core.models import User


class _AtomRouter(APIRouter):
    """Stand-in for Atom's router helpers (not part of the guide)."""

    def not_found_error(self, kind: str, key: object) -> HTTPException:
        return HTTPException(status_code=404, detail=f"{kind} {key} not found")

    def success_response(self, data: Any, message: str = "", status_code: int = 200) -> dict:
        columns = inspect(data).mapper.column_attrs
        return {
            "success": True,
            "message": message,
            "data": {column.key: getattr(data, column.key) for column in columns},
        }


router = _AtomRouter()


class UserCreate(BaseModel):
    email: str


@router.get("/users/{user_id}")
async def get_user(user_id: str, db: Session = Depends(get_db)):
    """
    API route with database access.

    FastAPI automatically:
    - Creates session before request
    - Closes session after request
    - Handles errors
    """
    user = db.query(User).filter(User.id == user_id).first()

    if not user:
        raise router.not_found_error("User", user_id)

    return router.success_response(data=user)


@router.post("/users")
async def create_user(user_data: UserCreate, db: Session = Depends(get_db)):
    """
    Create user with automatic transaction management.
    """
    user = User(**user_data.dict())
    db.add(user)
    db.commit()  # Explicit commit
    db.refresh(user)

    return router.success_response(data=user, message="User created successfully", status_code=201)


app = FastAPI()
app.include_router(router)
