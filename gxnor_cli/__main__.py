"""python -m gxnor_cli: the same as the `gxnor` command."""

from .cli import main

main()
