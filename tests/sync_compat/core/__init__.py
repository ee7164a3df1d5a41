"""Stand-in for the seed application's ``core`` package: ``database`` and
``database_manager`` are the documented re-export lines, ``models`` the tests' models."""
