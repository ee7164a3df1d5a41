"""``python -m atom_async_db.cli``: the ``atom-db`` console script, without the script."""

import sys

from . import main

sys.exit(main())
