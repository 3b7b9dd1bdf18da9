"""``python -m deployments.local``: run a serve config on a local Ray instance (``make serve``)."""

import sys

from deployments.local import main

sys.exit(main())
