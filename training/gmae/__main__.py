import sys

from training.gmae.cli import main

sys.exit(main())
