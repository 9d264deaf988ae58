"""`python -m moola_core.pretrain` / `torchrun -m moola_core.pretrain`: see run.py."""

import sys

from moola_core.pretrain.run import main

sys.exit(main())
