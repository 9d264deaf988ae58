"""`python -m moola_core.pretrain` / `torchrun -m moola_core.pretrain`: see run.py."""

from moola_core.pretrain.run import program

program()
