"""``python -m latentdiff.cli`` (what ``accelerate launch -m latentdiff.cli train ...`` runs)."""

import sys

from . import main

sys.exit(main())
