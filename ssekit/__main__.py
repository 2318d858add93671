"""``python -m ssekit`` is the ``ssekit`` command."""

import sys

from ._cli import main

sys.exit(main())
