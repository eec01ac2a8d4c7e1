"""DVC stage `compare`: all variants of params.yaml side by side, and the verdict.

    python stages/compare.py

What it reads and writes: leaflab.pipeline.compare.
"""

import sys

from leaflab import stage
from leaflab.config import load_config
from leaflab.pipeline import compare


def main() -> int:
    return stage.run(lambda: compare.run(load_config()))


if __name__ == "__main__":
    sys.exit(main())
