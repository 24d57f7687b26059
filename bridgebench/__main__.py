"""``python -m bridgebench``: the Lightning CLI (fit, validate, test, predict)."""

import sys

from bridgebench.cli import main

if __name__ == "__main__":
    sys.exit(main())
