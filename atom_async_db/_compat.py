"""The seam of the legacy layer: everything of the core's internals that ``sync_compat``
uses, and the only private module it may import (a test holds it to that).

What passes here: the session policy and the pieces of the session lifecycle the sync
scope shares with the async one, the sync engine's construction, the cancellation
hand-off ``run_legacy`` needs, and the default database.
"""

from ._cancel import deliver_rearmed_cancellation
from ._default import current_default
from ._engine import create_sync_engine_for
from ._masking import mask_url
from ._nesting import Outer, Place, is_graceful, place
from ._options import NO_OPTIONS, SessionOptionArgs, SessionOptions
from ._pool import FairPool
from ._session import (
    ScopeBase,
    Scopes,
    SessionScope,
    turn_timeout,
    warn_uncommitted,
)
from ._tracked import (
    NESTED_SESSION,
    TEST_ROOT_SESSION,
    TrackedSession,
    hand_over_to_outer,
    has_unsaved_changes,
)

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
    "create_sync_engine_for",
    "current_default",
    "deliver_rearmed_cancellation",
    "hand_over_to_outer",
    "has_unsaved_changes",
    "is_graceful",
    "mask_url",
    "place",
    "turn_timeout",
    "warn_uncommitted",
]
