import sys

from training.equivariance.cli import main

sys.exit(main())
