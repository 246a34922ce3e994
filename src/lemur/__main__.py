"""``python -m lemur``: the same as the ``lemur`` command."""

import sys

from lemur.cli import main

sys.exit(main())
