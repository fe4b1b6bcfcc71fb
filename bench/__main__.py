"""`python -m vgbench.bench` is the `vgbench` command (as is `python -m vgbench`)."""

import sys

from vgbench.bench.cli import main

sys.exit(main())
