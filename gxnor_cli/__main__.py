"""python -m gxnor_cli: the same as the `gxnor` command."""

from .entry import main

main()
