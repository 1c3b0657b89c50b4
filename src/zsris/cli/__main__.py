"""``python -m zsris.cli``: the same as the ``zsris`` command."""
import sys

from . import main

sys.exit(main())
