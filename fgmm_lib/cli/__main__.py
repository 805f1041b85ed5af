"""``python -m fgmm_lib.cli``: the ``fgmm`` command."""

import sys

from fgmm_lib.cli.main import main

sys.exit(main())
