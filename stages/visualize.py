"""DVC stage `visualize@<variant>`: pictures of the trained frontend, written as PNGs and logged to MLflow.

    python stages/visualize.py <variant>

What it reads and writes: leaflab.pipeline.visualize.
"""

import sys

from leaflab import stage
from leaflab.config import load_config
from leaflab.pipeline import visualize


def main(argv: list[str] | None = None) -> int:
    return stage.run_for_variant(__doc__.splitlines()[0], lambda variant: visualize.run(load_config(), variant), argv)


if __name__ == "__main__":
    sys.exit(main())
