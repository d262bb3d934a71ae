package flowstate_test

// An in-process gRPC server on 127.0.0.1 whose handlers each test chooses: for deterministic
// tests of retries, error decoding and watch resumption. The end-to-end tests use the real one.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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

// errorFixture is one file of tests/fixtures/errors: an error as a real server sent it,
// recorded by tests/server/error_fixtures.py (tests/server/test_error_fixtures.py fails when
// the server's errors drift from the files).
type errorFixture struct {
	Name       string            `json:"name"`
	GRPCStatus codes.Code        `json:"grpc-status"`
	Message    string            `json:"grpc-message"`
	DetailsBin []byte            `json:"grpc-status-details-bin"` // base64 in the file
	Trailers   map[string]string `json:"trailers"`
}

func loadErrorFixture(name string) errorFixture {
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "tests", "fixtures", "errors", name+".json"))
	if err != nil {
		panic(fmt.Sprintf("error fixture %s: %v", name, err))
	}
	var fixture errorFixture
	if err := json.Unmarshal(raw, &fixture); err != nil {
		panic(fmt.Sprintf("error fixture %s: %v", name, err))
	}
	return fixture
}

// recorded returns the recorded error `name` for a fake handler to return, and sets its
// trailers on the call of ctx: grpc-go then sends the recorded grpc-status, grpc-message and
// grpc-status-details-bin (the recorded google.rpc.Status, re-marshalled to the same bytes).
// Nothing is built by hand.
func recorded(ctx context.Context, name string) error {
	fixture := loadErrorFixture(name)
	st := &spb.Status{}
	if err := proto.Unmarshal(fixture.DetailsBin, st); err != nil {
		panic(fmt.Sprintf("error fixture %s: %v", name, err))
	}
	if codes.Code(st.GetCode()) != fixture.GRPCStatus || st.GetMessage() != fixture.Message {
		panic(fmt.Sprintf("error fixture %s: its status line and its details disagree", name))
	}
	if ctx != nil {
		if err := grpc.SetTrailer(ctx, metadata.New(fixture.Trailers)); err != nil {
			panic(fmt.Sprintf("SetTrailer: %v", err))
		}
	}
	return status.FromProto(st).Err()
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
