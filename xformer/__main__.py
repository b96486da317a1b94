"""``python -m xformer`` (and ``torchrun -m xformer``) runs the command line."""

import sys

from xformer.commands.cli import main

sys.exit(main())
