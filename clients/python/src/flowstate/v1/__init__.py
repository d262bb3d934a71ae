"""Generated protobuf messages and gRPC stubs for the Flowstate API (``flowstate.v1``).

Do not edit: regenerate with ``scripts/generate.sh`` (``make generate``).
"""
