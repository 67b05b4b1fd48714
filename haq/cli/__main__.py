"""``python -m haq.cli``: the `haq` command."""

import sys

from haq.cli import main

sys.exit(main())
