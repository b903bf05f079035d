import sys

from contrastkit.service.cli import main

if __name__ == "__main__":  # importing it (documentation tools do) runs nothing
    sys.exit(main())
