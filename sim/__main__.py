"""``python -m sim``: the same commands as ``aegis sim``."""

import sys

from sim.cli import main

sys.exit(main())
