"""``python -m asyncjobs``: the command line (``asyncjobs --help``)."""

from __future__ import annotations

import sys

from asyncjobs._cli import main

if __name__ == "__main__":
    sys.exit(main())
