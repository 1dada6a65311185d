"""`python -m pacs_server` runs the server CLI."""

import sys

from pacs_server.cli import main

sys.exit(main())
