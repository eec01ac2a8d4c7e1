"""DVC stage `train@<variant>`: one model per seed of train.seeds, each logged to its own MLflow run.

    python stages/train.py <variant>                                   # single process (DVC runs this)
    torchrun --nproc-per-node N stages/train.py <variant>              # DistributedDataParallel, same outputs

What it reads and writes: leaflab.pipeline.train. Checkpoints (resume after a kill) live outside the outputs,
in checkpoints/<variant>/seed-<s>/.
"""

import sys

from leaflab import stage
from leaflab.config import load_config
from leaflab.pipeline import train


def main(argv: list[str] | None = None) -> int:
    return stage.run_for_variant(__doc__.splitlines()[0], lambda variant: train.run(load_config(), variant), argv)


if __name__ == "__main__":
    sys.exit(main())
