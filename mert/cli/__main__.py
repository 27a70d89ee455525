"""``python -m mert.cli ...``: the ``mert`` command without the console script (how DDP ranks are re-run)."""

import sys

from mert.cli import main

sys.exit(main())
