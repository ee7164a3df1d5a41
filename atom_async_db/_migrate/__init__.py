"""``atom-db migrate``'s codemod: the seed guide's Migration Checklist, its mechanical
steps, applied to source files with libcst (formatting and comments kept).

- ``_legacy``: the legacy modules and what each of their names becomes in ``sync_compat``;
- ``_bindings``: what a name refers to (libcst's scope analysis);
- ``_imports``: the import plan (imports moved to ``sync_compat``, deprecated names renamed);
- ``_sessions``: the session rules (a redundant ``db.close()``, ``try``/``finally`` around
  ``SessionLocal()``), and when each is provably safe;
- ``_render``: import lines after the rewrite;
- ``_codemod``: one module, parsed, planned, rewritten and checked;
- ``_files``: the files of a run, the diff, the writing and the exit status.

Everything here imports libcst, the ``migrate`` extra: ``atom_async_db.cli`` imports this
package only when ``atom-db migrate`` runs.
"""
