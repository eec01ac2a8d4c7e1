"""DVC stage `evaluate@<variant>`: every seed's model on the test set, clean and under robustness conditions.

    python stages/evaluate.py <variant>

What it reads and writes: leaflab.pipeline.evaluate.
"""

import sys

from leaflab import stage
from leaflab.config import load_config
from leaflab.pipeline import evaluate


def main(argv: list[str] | None = None) -> int:
    return stage.run_for_variant(__doc__.splitlines()[0], lambda variant: evaluate.run(load_config(), variant), argv)


if __name__ == "__main__":
    sys.exit(main())
