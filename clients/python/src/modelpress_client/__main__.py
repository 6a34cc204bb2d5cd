"""``python -m modelpress_client`` runs the command line."""

import sys

from modelpress_client.cli import main

sys.exit(main())
