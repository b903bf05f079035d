"""`python -m contrastkit.training ...`: the training subcommands without the service."""

import sys

from contrastkit.training.cli import main

sys.exit(main())
