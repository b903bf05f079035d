"""`python -m contrastkit.training ...`: the training subcommands without the service."""

import sys

from contrastkit.training.cli import main

if __name__ == "__main__":  # importing it (documentation tools do) runs nothing
    sys.exit(main())
