"""``python -m training.fit3d.feedforward.lift``: lift scenes with a trained lifter."""

import sys

from training.fit3d.feedforward.cli import lift_main

if __name__ == "__main__":
    sys.exit(lift_main())
