"""``python -m dtmfmask``: the same as the ``dtmfmask`` command."""

import sys

from dtmfmask.cli import main

sys.exit(main())
