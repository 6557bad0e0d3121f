"""``python -m mailstack``: the same as the ``mailstack`` command."""

import sys

from .cli import main

sys.exit(main())
