"""`python -m srs_core.cli` (and `torchrun -m srs_core.cli`) runs the `srs` command."""

import sys

from srs_core.cli import main

sys.exit(main())
