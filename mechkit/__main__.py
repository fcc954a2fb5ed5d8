"""``python -m mechkit`` runs the command line."""

from mechkit.cli import main

main()
