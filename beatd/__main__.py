"""``python -m beatd ...``: the same as the ``beatd`` console script."""
import sys

from .cli import main

sys.exit(main())
