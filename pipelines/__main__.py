"""Entry point of `python -m pipelines <stage>`."""

import sys

from pipelines.cli import main

sys.exit(main())
