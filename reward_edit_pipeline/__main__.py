import sys

from reward_edit_pipeline.cli import main

sys.exit(main())
