// Package client is the Go client module of Flowstate.
//
//   - flowstate.dev/client/flowstate: the client to use (bearer credentials, request ids,
//     retries on UNAVAILABLE, typed errors, resumable watches); see its documentation.
//   - flowstate.dev/client/gen/flowstate/v1 (package flowstatev1): the generated API,
//     protoc-gen-go messages and protoc-gen-go-grpc stubs, generated from protos/flowstate/v1
//     by scripts/generate.sh.
//
// Example:
//
//	client, err := flowstate.Dial(ctx, "127.0.0.1:50051", flowstate.WithToken(token))
//	if err != nil { ... }
//	defer client.Close()
//	resp, err := client.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: id})
//	if errors.Is(err, flowstate.ErrFlowNotFound) { ... }
package client
