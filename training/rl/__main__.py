"""``torchrun --nproc-per-node N -m hysparse_kernels.training.rl run NAME --out DIR ...``: an RL
recipe on N ranks (the options of ``hysparse recipe run``)."""

import sys

from hysparse_kernels.cli import main

sys.exit(main(["recipe", *sys.argv[1:]]))
