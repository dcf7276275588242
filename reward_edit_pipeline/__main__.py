"""``python -m reward_edit_pipeline``: the same command line as ``reward-edit``."""

import sys

from reward_edit_pipeline.cli import main

sys.exit(main())
