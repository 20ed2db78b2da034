"""pydp-control, the control daemon (control.daemon.main); its parts are the other modules of this package."""

from control.daemon.main import Daemon, build_parser, main, parse_args  # noqa: F401
from control.daemon.regions import RegionHolder  # noqa: F401
