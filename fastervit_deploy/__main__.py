"""`python -m fastervit_deploy` is the `fvdeploy` command."""

from .cli import main

main()
