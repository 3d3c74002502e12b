"""`python -m shim.admin` runs pykata-runtime."""

import sys

from shim.admin import main

sys.exit(main())
