"""`python -m kontinual` is the `kontinual` command."""

import sys

from kontinual.cli import main

sys.exit(main())
