"""`python -m graft` (also what torchrun launches)."""

from graft.cli import main

main()
