"""`python -m bench` is the `vgbench` command."""

import sys

from bench.cli import main

sys.exit(main())
