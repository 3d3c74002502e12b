"""``python3 -m guest``: same as the ``pykata-image`` command."""

import sys

from guest.cli import main

sys.exit(main())
