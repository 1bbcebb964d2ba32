"""``python -m uqmerge`` runs the command line."""

from uqmerge.cli import main

main()
