import sys

from negset.cli import main

sys.exit(main())
