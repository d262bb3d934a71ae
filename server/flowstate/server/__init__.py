"""The Flowstate gRPC server (grpc.aio): servicer, request validation, errors, auth, runtime.

Modules:

- `servicer`: `FlowStateServicer`, a few lines per RPC: validate + convert the request, call the
  store (which owns the transaction) or the pure core, convert the response;
- `rpc`: the one wrapper every RPC goes through: correlation id, authentication and scope check,
  error mapping, logging and metrics;
- `errors`: the one table from domain `ErrorCode` to gRPC status code, and the rich status
  (`ErrorInfo`, `RetryInfo`, `FlowError`, `BadRequest`) built from a `FlowStateError`;
- `validation`: request checks that run before anything touches the store (MALFORMED_REQUEST);
- `convert`: domain values <-> `flowstate.v1` messages, with precomputed enum tables;
- `auth`: JWT bearer tokens (HS256 secret or RS256/ES256 public key), scopes, the dev secret;
- `config`: `ServerSettings`, from flags and ``FLOWSTATE_*`` environment variables;
- `app`: `FlowstateServer`: start-up and graceful shutdown of store, watch hub, gRPC server,
  health, reflection and metrics;
- `metrics`, `logs`: Prometheus metrics and structured logging;
- `watch` (streams engineer): the LISTEN/NOTIFY fan-out hub behind WatchFlow/WatchFlows.
"""
