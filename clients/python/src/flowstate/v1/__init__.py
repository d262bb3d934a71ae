"""Generated protobuf messages, gRPC stubs and Connect applications for ``flowstate.v1``.

``*_connect.py`` modules need the ``connectrpc`` package (the ``connect`` extra).
Do not edit: regenerate with ``scripts/generate.sh`` (``make generate``).
"""
