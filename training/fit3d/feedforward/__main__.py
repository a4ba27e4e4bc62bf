import sys

from training.fit3d.feedforward.cli import main

sys.exit(main())
