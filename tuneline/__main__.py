"""Run as: python -m tuneline --help"""

import sys

from .cli.main import main

sys.exit(main())
