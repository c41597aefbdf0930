"""``python -m asyncjobs._host.daemon``: run the job host (``--daemonize`` detaches)."""

import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
