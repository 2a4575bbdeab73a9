"""``python -m samkit``: the same as the ``samkit`` command."""

import sys

from samkit.cli import main

sys.exit(main())
