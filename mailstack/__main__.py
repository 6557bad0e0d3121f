"""``python -m mailstack``: the same as the ``mailstack`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a worker process re-imports the main module
    sys.exit(main())
