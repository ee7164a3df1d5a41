"""Static checks for the seed guide's anti-patterns (``atom-db lint``), with the stdlib's
``ast`` only: no extra is needed.

One module per concern: ``_model`` (findings, rule codes, configuration), ``_config``
(``[tool.atom-db.lint]`` in ``pyproject.toml``), ``_facts`` (what the rules share: imports,
the calls that open a session, the parameters that receive one), a module per rule family
(``_deprecated``: ATOM101; ``_lifecycle``: ATOM102-104; ``_scopes``: ATOM105-106;
``_external_calls``: ATOM107; ``_relationships``: ATOM108; ``_commits``: ATOM109), and
``_runner`` (files, parsing, ``# noqa``, selection, order).
"""

from ._model import PARSE_ERROR, RULES, Config, Finding, LintUsageError
from ._runner import Report, lint

__all__ = ["PARSE_ERROR", "RULES", "Config", "Finding", "LintUsageError", "Report", "lint"]
