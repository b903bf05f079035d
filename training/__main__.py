"""`python -m training ...`: the training subcommands without the service."""

import sys

from training.cli import main

sys.exit(main())
