"""The file Lightning's DDP launcher re-runs to start the other ranks of ``mert pretrain`` on a node.

Lightning starts rank 1.. by running ``sys.argv[0]`` again with the same overrides; ``mert pretrain`` sets
``sys.argv[0]`` to this file (:mod:`mert.cli.pretrain`), which runs the same command without the ``pretrain``
word. The folder of a re-run file goes first on ``sys.path``, so no module here may share its name with an
importable top-level module (``tests/test_imports.py`` checks it).
"""

import sys

from mert.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
