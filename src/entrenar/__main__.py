"""`python -m entrenar` runs the command line."""

from entrenar.cli import entry

entry()
