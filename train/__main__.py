"""`python -m reward_edit_pipeline.train` / `accelerate launch -m reward_edit_pipeline.train`."""

import sys

from .train import main

if __name__ == "__main__":
    sys.exit(main())
