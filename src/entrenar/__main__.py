"""`python -m entrenar` runs the command line."""

import sys

from entrenar.cli import main

sys.exit(main())
