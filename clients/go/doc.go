// Package client is the Go client module of Flowstate.
//
// The generated API lives in flowstate.dev/client/gen/flowstate/v1 (package flowstatev1):
// protoc-gen-go messages and protoc-gen-go-grpc stubs, generated from protos/flowstate/v1 by
// scripts/generate.sh. Rich error details (google.rpc.ErrorInfo, RetryInfo, BadRequest) decode
// with google.golang.org/grpc/status and google.golang.org/genproto/googleapis/rpc/errdetails.
//
//	conn, err := grpc.NewClient("127.0.0.1:50051", grpc.WithTransportCredentials(insecure.NewCredentials()))
//	if err != nil { ... }
//	defer conn.Close()
//	flows := flowstatev1.NewFlowStateServiceClient(conn)
//	resp, err := flows.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: id})
package client
