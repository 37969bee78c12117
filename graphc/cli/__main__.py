"""``python -m graphc.cli``: the command line without the installed script."""
import sys

from graphc.cli import main

sys.exit(main())
