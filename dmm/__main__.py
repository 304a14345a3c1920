"""`python -m dmm ...` (also what `torchrun -m dmm train ...` runs)."""
import sys

from dmm.cli import main

sys.exit(main())
