"""The seam of the legacy layer: everything of the core's internals that ``sync_compat``
uses, and the only private module it may import (a test holds it to that).

What passes here: the session policy and the pieces of the session lifecycle the sync
scope shares with the async one, the sync engine's construction, the cancellation
hand-off ``run_legacy`` needs, and the default database.
"""

from ._cancel import deliver_rearmed_cancellation
from ._default import current_default
from ._engine import create_sync_engine_for, lock_sqlite_at_first_statement
from ._masking import mask_url
from ._nesting import Outer, Place, is_graceful, place
from ._options import NO_OPTIONS, SessionOptionArgs, SessionOptions
from ._pool import FairPool
from ._session import (
    ScopeBase,
    Scopes,
    SessionScope,
    refuse_a_second_sqlite_connection,
    turn_timeout,
    warn_uncommitted,
)
from ._tracked import (
    NESTED_SESSION,
    TEST_ROOT_SESSION,
    TrackedSession,
    backing_class,
    composed_class,
    hand_over_to_outer,
    has_unsaved_changes,
    merge_session_keywords,
    with_keywords,
)
from ._watch import monitoring

__all__ = [
    "NESTED_SESSION",
    "NO_OPTIONS",
    "TEST_ROOT_SESSION",
    "FairPool",
    "Outer",
    "Place",
    "ScopeBase",
    "Scopes",
    "SessionOptionArgs",
    "SessionOptions",
    "SessionScope",
    "TrackedSession",
    "backing_class",
    "composed_class",
    "create_sync_engine_for",
    "current_default",
    "deliver_rearmed_cancellation",
    "hand_over_to_outer",
    "has_unsaved_changes",
    "is_graceful",
    "lock_sqlite_at_first_statement",
    "mask_url",
    "merge_session_keywords",
    "monitoring",
    "place",
    "refuse_a_second_sqlite_connection",
    "turn_timeout",
    "warn_uncommitted",
    "with_keywords",
]
