"""``python -m adprune``: the ``adprune`` command."""

import sys

from adprune.cli import main

sys.exit(main())
