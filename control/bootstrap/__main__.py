"""python -m control.bootstrap: the same as pydp-bootstrap."""

import sys

from control.bootstrap import main

sys.exit(main())
