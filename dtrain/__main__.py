"""``python -m dtrain`` is the ``dtrain`` command."""

import sys

from .cli import main

sys.exit(main())
