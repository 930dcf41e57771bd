"""Run as: python -m tuneline --help"""

import sys

from .cli import main

sys.exit(main())
