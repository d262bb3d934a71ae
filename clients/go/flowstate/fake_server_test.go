package flowstate_test

// An in-process gRPC server on 127.0.0.1 whose handlers each test chooses: for deterministic
// tests of retries, error decoding and watch resumption. The end-to-end tests use the real one.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

type fakeServer struct {
	flowstatev1.UnimplementedFlowStateServiceServer

	mu           sync.Mutex
	authHeader   []string
	clientHeader []string

	getFlow         func(context.Context, *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error)
	createFlow      func(context.Context, *flowstatev1.CreateFlowRequest) (*flowstatev1.CreateFlowResponse, error)
	transitionPhase func(context.Context, *flowstatev1.TransitionPhaseRequest) (*flowstatev1.TransitionPhaseResponse, error)
	watchFlow       func(*flowstatev1.WatchFlowRequest, grpc.ServerStreamingServer[flowstatev1.WatchFlowResponse]) error
	watchFlows      func(*flowstatev1.WatchFlowsRequest, grpc.ServerStreamingServer[flowstatev1.WatchFlowsResponse]) error
	listFlowHistory func(context.Context, *flowstatev1.ListFlowHistoryRequest) (*flowstatev1.ListFlowHistoryResponse, error)

	address string
	grpc    *grpc.Server
}

func (f *fakeServer) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authHeader = append(f.authHeader, md.Get("authorization")...)
	f.clientHeader = append(f.clientHeader, md.Get("x-flowstate-client")...)
}

func (f *fakeServer) headers() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.authHeader...)
}

func (f *fakeServer) GetFlow(ctx context.Context, req *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
	f.record(ctx)
	return f.getFlow(ctx, req)
}

func (f *fakeServer) ListFlowHistory(ctx context.Context, req *flowstatev1.ListFlowHistoryRequest) (*flowstatev1.ListFlowHistoryResponse, error) {
	f.record(ctx)
	return f.listFlowHistory(ctx, req)
}

func (f *fakeServer) CreateFlow(ctx context.Context, req *flowstatev1.CreateFlowRequest) (*flowstatev1.CreateFlowResponse, error) {
	f.record(ctx)
	return f.createFlow(ctx, req)
}

func (f *fakeServer) TransitionPhase(ctx context.Context, req *flowstatev1.TransitionPhaseRequest) (*flowstatev1.TransitionPhaseResponse, error) {
	f.record(ctx)
	return f.transitionPhase(ctx, req)
}

func (f *fakeServer) WatchFlow(req *flowstatev1.WatchFlowRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowResponse]) error {
	f.record(stream.Context())
	return f.watchFlow(req, stream)
}

func (f *fakeServer) WatchFlows(req *flowstatev1.WatchFlowsRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowsResponse]) error {
	f.record(stream.Context())
	return f.watchFlows(req, stream)
}

// serve starts f on 127.0.0.1 (on address when given, to restart on the same port).
func (f *fakeServer) serve(t *testing.T, address string) *fakeServer {
	t.Helper()
	if address == "" {
		address = "127.0.0.1:0"
	}
	var listener net.Listener
	var err error
	for attempt := 0; attempt < 50; attempt++ { // a just-closed port may take a moment
		if listener, err = net.Listen("tcp", address); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	f.grpc = grpc.NewServer()
	flowstatev1.RegisterFlowStateServiceServer(f.grpc, f)
	f.address = listener.Addr().String()
	go func() { _ = f.grpc.Serve(listener) }()
	t.Cleanup(f.grpc.Stop)
	return f
}

// kill closes every connection at once (like a crashed server).
func (f *fakeServer) kill() { f.grpc.Stop() }

// refusal builds a rich Flowstate status the way the real server does: ErrorInfo, FlowError,
// RetryInfo when retryable, BadRequest for field violations.
func refusal(code codes.Code, reason string, message string, flowError *flowstatev1.FlowError, violations ...*errdetails.BadRequest_FieldViolation) error {
	if flowError == nil {
		flowError = &flowstatev1.FlowError{}
	}
	flowError = proto.Clone(flowError).(*flowstatev1.FlowError)
	flowError.ErrorCode = flowstatev1.ErrorCode(flowstatev1.ErrorCode_value["ERROR_CODE_"+reason])
	flowError.Message = message
	if flowError.CorrelationId == "" {
		flowError.CorrelationId = "corr-1"
	}
	metadata := map[string]string{"correlation_id": flowError.CorrelationId}
	for key, value := range flowError.GetDetails().AsMap() {
		encoded, _ := json.Marshal(value)
		metadata[key] = string(encoded)
	}
	details := []protoadapt.MessageV1{
		protoadapt.MessageV1Of(&errdetails.ErrorInfo{Reason: reason, Domain: "flowstate.v1", Metadata: metadata}),
		protoadapt.MessageV1Of(flowError),
	}
	if flowError.RetryAllowed {
		details = append(details, protoadapt.MessageV1Of(&errdetails.RetryInfo{RetryDelay: durationpb.New(0)}))
	}
	if len(violations) > 0 {
		details = append(details, protoadapt.MessageV1Of(&errdetails.BadRequest{FieldViolations: violations}))
	}
	st, err := status.New(code, message).WithDetails(details...)
	if err != nil {
		panic(fmt.Sprintf("WithDetails: %v", err))
	}
	return st.Err()
}

func mustStruct(values map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(values)
	if err != nil {
		panic(err)
	}
	return s
}

func changeEvent(version int64, status flowstatev1.FlowStatus) *flowstatev1.WatchFlowResponse {
	return &flowstatev1.WatchFlowResponse{Event: &flowstatev1.FlowEvent{
		FlowId: "f1", FlowVersion: version, Status: status, Progress: float64(version),
		Kind: &flowstatev1.FlowEvent_Change{Change: &flowstatev1.HistoryEntry{FlowId: "f1", FlowVersion: version, StatusAfter: status}},
	}}
}

func snapshotEvent(version int64, status flowstatev1.FlowStatus) *flowstatev1.WatchFlowResponse {
	return &flowstatev1.WatchFlowResponse{Event: &flowstatev1.FlowEvent{
		FlowId: "f1", FlowVersion: version, Status: status,
		Kind: &flowstatev1.FlowEvent_Snapshot{Snapshot: &flowstatev1.Flow{FlowId: "f1", Version: version, Status: status}},
	}}
}

func heartbeatEvent() *flowstatev1.WatchFlowResponse {
	return &flowstatev1.WatchFlowResponse{Event: &flowstatev1.FlowEvent{Kind: &flowstatev1.FlowEvent_Heartbeat{Heartbeat: &flowstatev1.Heartbeat{}}}}
}
