import sys

from training.fit3d.lift.cli import main

sys.exit(main())
