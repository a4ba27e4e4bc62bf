import sys

from training.fit3d.finetune.cli import main

sys.exit(main())
