"""``python -m fgmm_lib ...`` is the ``fgmm`` command (and what ``torchrun -m fgmm_lib`` runs)."""

import sys

from fgmm_lib.cli.main import main

sys.exit(main())
