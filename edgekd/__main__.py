"""`python -m edgekd ...` (also what `torchrun -m edgekd distill ...` runs)."""

from edgekd.cli import main

main()
