import sys

from nima.cli import main

sys.exit(main())
