"""``python -m putri_export.cli``."""

import sys

from . import main

sys.exit(main())
