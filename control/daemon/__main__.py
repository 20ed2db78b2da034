import sys

from control.daemon.main import main

sys.exit(main())
