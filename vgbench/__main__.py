"""`python -m vgbench` is the `vgbench` command."""

import sys

from vgbench.bench.cli import main

sys.exit(main())
