"""``python -m beat_lab``: the ``beat-lab`` command."""
import sys

from .cli import main

sys.exit(main())
