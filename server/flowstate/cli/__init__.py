"""The `flowstate` command line: ``serve``, ``token``, ``health``, ``migrate``/``import-legacy``,
``flows``.

`flowstate.cli.main:main` is the console script. Each command group registers itself on the
argparse sub-parsers (``register(subparsers)``) and sets a ``run(args) -> int`` default.

gRPC's C core writes its own log lines to stderr (through absl, outside Python's logging), and
with ``GRPC_VERBOSITY`` unset it writes them from INFO up: ``chttp2_transport.cc ... Got
goaway`` for every client that goes away, ``fork_posix.cc`` when a subprocess starts, a line per
failed TLS handshake. Importing this package (which the console script does before anything
imports grpc) sets ``GRPC_VERBOSITY=ERROR`` unless the environment chose a level, so the
server's log holds our structured lines and the C core's real errors only
(docs/operations.md, "Logs").
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
