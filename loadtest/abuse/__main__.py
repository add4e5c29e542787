"""``python -m loadtest.abuse``: the abuse suite against a live server (see :mod:`loadtest.abuse.suite`)."""

import sys

from loadtest.abuse.suite import main

sys.exit(main())
