"""``python -m mert.cli ...``: the ``mert`` command without the console script.

Lightning's DDP launcher re-runs ranks of ``python -m mert.cli pretrain`` this way, without the word ``pretrain``
(:func:`mert.cli.main` puts it back); ranks of the ``mert`` console script re-run :mod:`mert.cli.rank_entry`.
"""

import sys

from mert.cli import main

sys.exit(main())
