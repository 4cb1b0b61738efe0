"""``python -m dom0.toolstack VERB ...``: the ``xensim`` command without the console script."""

import sys

from dom0.toolstack.cli import main

sys.exit(main())
