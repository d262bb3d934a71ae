"""The `flowstate` command line: ``serve``, ``token``, ``migrate``/``import-legacy``, ``flows``.

`flowstate.cli.main:main` is the console script. Each command group registers itself on the
argparse sub-parsers (``register(subparsers)``) and sets a ``run(args) -> int`` default.
"""
