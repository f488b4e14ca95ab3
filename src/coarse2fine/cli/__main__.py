import sys

from coarse2fine.cli import main

sys.exit(main())
