package flowstate_test

// Unit tests of the wrapper against an in-process fake server (fake_server_test.go): bearer
// credentials, request ids and retries, error decoding, resumable watches. The behaviour
// against the real server is in e2e_test.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func fastRetry(attempts int) flowstate.RetryPolicy {
	return flowstate.RetryPolicy{MaxAttempts: attempts, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Deadline: 10 * time.Second}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newTestClient(t *testing.T, address string, options ...flowstate.Option) *flowstate.Client {
	t.Helper()
	options = append([]flowstate.Option{
		flowstate.WithToken("t0k3n"),
		flowstate.WithRetryPolicy(fastRetry(5)),
		flowstate.WithWatchRetryPolicy(flowstate.RetryPolicy{MaxAttempts: -1, InitialBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, Deadline: 10 * time.Second}),
	}, options...)
	client, err := flowstate.NewClient(address, options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// unavailable is what a server whose database is unreachable answers (recorded).
func unavailable(ctx context.Context) error {
	return recorded(ctx, "temporary_resource_unavailable")
}

func TestTokenSourceIsAskedOnEveryAttempt(t *testing.T) {
	attempts := 0
	server := (&fakeServer{getFlow: func(ctx context.Context, _ *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
		attempts++
		if attempts < 3 {
			return nil, unavailable(ctx)
		}
		return &flowstatev1.GetFlowResponse{Flow: &flowstatev1.Flow{FlowId: "f1"}}, nil
	}}).serve(t, "")
	n := 0
	client := newTestClient(t, server.address, flowstate.WithTokenSource(func(context.Context) (string, error) {
		n++
		return "tok-" + string(rune('0'+n)), nil
	}))
	resp, err := client.GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetFlow().GetFlowId() != "f1" {
		t.Fatalf("flow = %v", resp.GetFlow())
	}
	if got, want := server.headers(), []string{"Bearer tok-1", "Bearer tok-2", "Bearer tok-3"}; !slices.Equal(got, want) {
		t.Fatalf("authorization headers = %v, want %v", got, want)
	}
}

func TestMutationGetsOneRequestIDReusedOnRetries(t *testing.T) {
	var mu sync.Mutex
	var ids []string
	server := (&fakeServer{
		transitionPhase: func(ctx context.Context, req *flowstatev1.TransitionPhaseRequest) (*flowstatev1.TransitionPhaseResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			ids = append(ids, req.GetRequestId())
			if len(ids) < 3 {
				return nil, unavailable(ctx)
			}
			return &flowstatev1.TransitionPhaseResponse{Flow: &flowstatev1.Flow{Version: 2}}, nil
		},
		createFlow: func(_ context.Context, req *flowstatev1.CreateFlowRequest) (*flowstatev1.CreateFlowResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			ids = append(ids, req.GetRequestId())
			return &flowstatev1.CreateFlowResponse{Flow: &flowstatev1.Flow{FlowId: "new"}}, nil
		},
	}).serve(t, "")
	client := newTestClient(t, server.address)
	ctx := testContext(t)
	request := &flowstatev1.TransitionPhaseRequest{FlowId: "f1", Phase: "data_import", TargetState: flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS}
	if _, err := client.TransitionPhase(ctx, request); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 3 || ids[0] != ids[1] || ids[1] != ids[2] || !uuidPattern.MatchString(ids[0]) {
		t.Fatalf("request ids = %v, want one UUID three times", ids)
	}
	if request.GetRequestId() != "" {
		t.Fatalf("the caller's request was modified: %q", request.GetRequestId())
	}
	if _, err := client.CreateFlow(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{RequestId: "mine-1"}); err != nil {
		t.Fatal(err)
	}
	if !uuidPattern.MatchString(ids[3]) || ids[3] == ids[0] || ids[4] != "mine-1" {
		t.Fatalf("request ids = %v, want a new UUID, then mine-1", ids)
	}
}

func TestRateLimitedCallIsRetriedWithTheSameRequestID(t *testing.T) {
	var mu sync.Mutex
	var ids []string
	server := (&fakeServer{
		transitionPhase: func(ctx context.Context, req *flowstatev1.TransitionPhaseRequest) (*flowstatev1.TransitionPhaseResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			ids = append(ids, req.GetRequestId())
			if len(ids) == 1 {
				return nil, recorded(ctx, "rate_limited")
			}
			return &flowstatev1.TransitionPhaseResponse{Flow: &flowstatev1.Flow{Version: 2}}, nil
		},
	}).serve(t, "")
	client := newTestClient(t, server.address)
	request := &flowstatev1.TransitionPhaseRequest{FlowId: "f1", Phase: "data_import", TargetState: flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS}
	if _, err := client.TransitionPhase(testContext(t), request); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0] != ids[1] {
		t.Fatalf("request ids = %v, want one id twice (RATE_LIMITED retried)", ids)
	}
}

func TestRefusalIsNotRetriedAndIsDecoded(t *testing.T) {
	calls := 0
	server := (&fakeServer{transitionPhase: func(ctx context.Context, _ *flowstatev1.TransitionPhaseRequest) (*flowstatev1.TransitionPhaseResponse, error) {
		calls++
		return nil, recorded(ctx, "invalid_phase_transition")
	}}).serve(t, "")
	client := newTestClient(t, server.address)
	_, err := client.TransitionPhase(testContext(t), &flowstatev1.TransitionPhaseRequest{FlowId: "f1", Phase: "data_import", TargetState: flowstatev1.PhaseState_PHASE_STATE_COMPLETED})
	if calls != 1 {
		t.Fatalf("calls = %d, want 1 (no retry)", calls)
	}
	if !errors.Is(err, flowstate.ErrInvalidPhaseTransition) || !errors.Is(err, flowstate.ErrFailedPrecondition) {
		t.Fatalf("errors.Is: %v", err)
	}
	if errors.Is(err, flowstate.ErrPhaseOrderViolation) || errors.Is(err, flowstate.ErrUnavailable) {
		t.Fatalf("matches the wrong sentinels: %v", err)
	}
	var fe *flowstate.Error
	if !errors.As(err, &fe) {
		t.Fatalf("not a *flowstate.Error: %T", err)
	}
	// What the real server said (tests/fixtures/errors/invalid_phase_transition.json).
	const message = "Cannot transition phase 'data_import' from 'not_started' to 'completed'"
	if fe.Code != flowstate.CodeInvalidPhaseTransition || fe.GRPCCode != codes.FailedPrecondition || fe.Message != message {
		t.Fatalf("decoded %+v", fe)
	}
	if got := fe.ValidTransitions(); !slices.Equal(got, []flowstatev1.PhaseState{flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS}) {
		t.Fatalf("ValidTransitions = %v", got)
	}
	if fe.Phase() != "data_import" || fe.CorrelationID != "fixture-correlation-id" || fe.RetryAllowed || fe.FlowError == nil || fe.ErrorInfo == nil {
		t.Fatalf("decoded %+v", fe)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("status.Code = %v", status.Code(err))
	}
	encoded, _ := json.Marshal(fe)
	var decoded map[string]any
	_ = json.Unmarshal(encoded, &decoded)
	want := map[string]any{
		"code": "INVALID_PHASE_TRANSITION", "grpcCode": "FAILED_PRECONDITION", "message": message,
		"details":      map[string]any{"phase": "data_import", "from_state": "not_started", "to_state": "completed", "valid_transitions": []any{"in_progress"}},
		"retryAllowed": false, "correlationId": "fixture-correlation-id", "phase": "data_import",
	}
	if got, _ := json.Marshal(decoded); string(got) != mustJSON(want) {
		t.Fatalf("JSON = %s, want %s", got, mustJSON(want))
	}
}

func mustJSON(value any) string {
	encoded, err := json.Marshal(value)
	if err != nil {
		panic(err)
	}
	return string(encoded)
}

func TestGivesUpAfterMaxAttempts(t *testing.T) {
	calls := 0
	server := (&fakeServer{getFlow: func(ctx context.Context, _ *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
		calls++
		return nil, unavailable(ctx)
	}}).serve(t, "")
	client := newTestClient(t, server.address, flowstate.WithRetryPolicy(fastRetry(4)))
	_, err := client.GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"})
	if !errors.Is(err, flowstate.ErrUnavailable) || !errors.Is(err, flowstate.ErrTemporaryResourceUnavailable) || calls != 4 {
		t.Fatalf("err = %v after %d calls, want UNAVAILABLE after 4", err, calls)
	}
	client = newTestClient(t, server.address, flowstate.WithRetryPolicy(flowstate.NoRetry()))
	calls = 0
	if _, err := client.GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"}); !errors.Is(err, flowstate.ErrUnavailable) || calls != 1 {
		t.Fatalf("NoRetry: err = %v after %d calls", err, calls)
	}
}

func TestRefusedConnectionIsUnavailable(t *testing.T) {
	server := (&fakeServer{}).serve(t, "")
	server.kill()
	client := newTestClient(t, server.address, flowstate.WithRetryPolicy(fastRetry(3)))
	_, err := client.GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"})
	var fe *flowstate.Error
	if !errors.As(err, &fe) || fe.GRPCCode != codes.Unavailable || fe.Code != flowstate.CodeTemporaryResourceUnavailable || fe.FlowError != nil {
		t.Fatalf("err = %#v", err)
	}
}

func TestMutationRetriedAfterTheConnectionBrokeMidCall(t *testing.T) {
	var mu sync.Mutex
	var ids []string
	firstStarted := make(chan struct{})
	fake := &fakeServer{}
	fake.transitionPhase = func(ctx context.Context, req *flowstatev1.TransitionPhaseRequest) (*flowstatev1.TransitionPhaseResponse, error) {
		mu.Lock()
		ids = append(ids, req.GetRequestId())
		first := len(ids) == 1
		mu.Unlock()
		if first {
			close(firstStarted)
			<-ctx.Done() // hangs until the server is killed under it
		}
		return &flowstatev1.TransitionPhaseResponse{Flow: &flowstatev1.Flow{Version: 2}}, nil
	}
	fake.serve(t, "")
	client := newTestClient(t, fake.address, flowstate.WithRetryPolicy(flowstate.RetryPolicy{MaxAttempts: 20, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}))
	done := make(chan error, 1)
	go func() {
		_, err := client.TransitionPhase(testContext(t), &flowstatev1.TransitionPhaseRequest{FlowId: "f1", Phase: "data_import", TargetState: flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS})
		done <- err
	}()
	<-firstStarted
	address := fake.address
	fake.kill()
	fake.serve(t, address)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 2 || ids[0] != ids[1] {
		t.Fatalf("request ids = %v, want the same id twice", ids)
	}
}

func TestCancelledContextStopsRetrying(t *testing.T) {
	var calls atomic.Int32
	server := (&fakeServer{getFlow: func(ctx context.Context, _ *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
		calls.Add(1)
		return nil, unavailable(ctx)
	}}).serve(t, "")
	// Signalled once the first attempt's answer is back in the client: it is then in its backoff.
	attemptDone := make(chan struct{}, 1)
	observe := grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		select {
		case attemptDone <- struct{}{}:
		default:
		}
		return err
	})
	// A backoff of an hour: the call can only come back if cancelling the context ends the wait.
	client := newTestClient(t, server.address, flowstate.WithDialOptions(observe),
		flowstate.WithRetryPolicy(flowstate.RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Hour, MaxBackoff: time.Hour}))
	guard := testContext(t)
	ctx, cancel := context.WithCancel(guard)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := client.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: "f1"})
		done <- err
	}()
	select {
	case <-attemptDone:
	case <-guard.Done():
		t.Fatal("the first attempt never came back")
	}
	cancel()
	select {
	case err := <-done:
		// The last attempt's error is returned, not a bare context error.
		if !errors.Is(err, flowstate.ErrUnavailable) || status.Code(err) != codes.Unavailable {
			t.Fatalf("err = %v, want the UNAVAILABLE of the one attempt", err)
		}
	case <-guard.Done():
		t.Fatal("the call did not return after its context was cancelled")
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d attempts, want 1 (cancelled during the first backoff)", n)
	}
}

func TestPlaintextOnlyToLoopbackUnlessInsecure(t *testing.T) {
	if _, err := flowstate.NewClient("flowstate.example.com:443", flowstate.WithToken("x")); err == nil {
		t.Fatal("plaintext to a remote host was allowed")
	}
	for _, address := range []string{"127.0.0.1:50051", "localhost:50051", "[::1]:50051", "dns:///localhost:50051"} {
		client, err := flowstate.NewClient(address)
		if err != nil {
			t.Fatalf("%s: %v", address, err)
		}
		_ = client.Close()
	}
	for _, option := range []flowstate.Option{flowstate.WithInsecure(), flowstate.WithTLS(nil)} {
		client, err := flowstate.NewClient("flowstate.example.com:443", option)
		if err != nil {
			t.Fatal(err)
		}
		_ = client.Close()
	}
}

func TestBackoff(t *testing.T) {
	policy := flowstate.RetryPolicy{InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2}
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 3: 400 * time.Millisecond, 10: time.Second} {
		if got := policy.Backoff(attempt); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", attempt, got, want)
		}
	}
}

func TestErrorDecoding(t *testing.T) {
	// Each case's error as the real server sent it (tests/fixtures/errors), or, for the last,
	// a bare status (what a proxy or a crashed handler may send).
	fixture := func(name string) func(context.Context) error {
		return func(ctx context.Context) error { return recorded(ctx, name) }
	}
	cases := []struct {
		name  string
		err   func(context.Context) error
		is    []error
		check func(t *testing.T, fe *flowstate.Error)
	}{
		{"PHASE_ORDER_VIOLATION", fixture("phase_order_violation"),
			[]error{flowstate.ErrPhaseOrderViolation, flowstate.ErrFailedPrecondition},
			func(t *testing.T, fe *flowstate.Error) {
				if !slices.Equal(fe.BlockingPhases(), []string{"data_import"}) {
					t.Fatal(fe.BlockingPhases())
				}
			}},
		{"VERSION_CONFLICT", fixture("version_conflict"),
			[]error{flowstate.ErrVersionConflict, flowstate.ErrAborted},
			func(t *testing.T, fe *flowstate.Error) {
				if v, ok := fe.CurrentVersion(); !ok || v != 2 {
					t.Fatal(v, ok)
				}
			}},
		{"FLOW_NOT_FOUND", fixture("flow_not_found"), []error{flowstate.ErrFlowNotFound, flowstate.ErrNotFound}, nil},
		{"UNAUTHENTICATED", fixture("unauthenticated"), []error{flowstate.ErrUnauthenticated},
			func(t *testing.T, fe *flowstate.Error) {
				if fe.Message != "missing bearer token (authorization: Bearer <token>)" {
					t.Fatal(fe.Message)
				}
			}},
		{"PERMISSION_DENIED", fixture("permission_denied"), []error{flowstate.ErrPermissionDenied}, nil},
		{"MALFORMED_REQUEST", fixture("malformed_request"),
			[]error{flowstate.ErrMalformedRequest, flowstate.ErrInvalidArgument},
			func(t *testing.T, fe *flowstate.Error) {
				if len(fe.FieldViolations) != 1 || fe.FieldViolations[0].GetField() != "flow_id" || fe.FieldViolations[0].GetDescription() != "must be a UUID (8-4-4-4-12 hex digits)" {
					t.Fatal(fe.FieldViolations)
				}
			}},
		{"INVALID_PHASE", fixture("invalid_phase"), []error{flowstate.ErrInvalidPhase, flowstate.ErrInvalidArgument}, nil},
		{"SERVER_SHUTTING_DOWN", fixture("server_shutting_down"), []error{flowstate.ErrServerShuttingDown, flowstate.ErrUnavailable},
			func(t *testing.T, fe *flowstate.Error) {
				if !fe.RetryAllowed || fe.RetryDelay != time.Second { // the server asks for a second
					t.Fatal(fe.RetryAllowed, fe.RetryDelay)
				}
			}},
		{"RATE_LIMITED", fixture("rate_limited"), []error{flowstate.ErrRateLimited},
			func(t *testing.T, fe *flowstate.Error) {
				if !fe.RetryAllowed || fe.RetryDelay != time.Second {
					t.Fatal(fe.RetryAllowed, fe.RetryDelay)
				}
			}},
		{"MAX_RETRIES_EXCEEDED", fixture("max_retries_exceeded"),
			[]error{flowstate.ErrMaxRetriesExceeded},
			func(t *testing.T, fe *flowstate.Error) {
				if n, ok := fe.AttemptsRemaining(); !ok || n != 0 || !slices.Equal(fe.Recovery(), []string{"abandon", "cancel"}) {
					t.Fatal(n, ok, fe.Recovery())
				}
			}},
		{"an unknown reason falls back to the gRPC code", fixture("unknown_reason"), []error{flowstate.ErrFailedPrecondition},
			func(t *testing.T, fe *flowstate.Error) {
				if errors.Is(fe, flowstate.ErrInvalidPhaseTransition) || fe.Message != "Cannot transition phase 'data_import' from 'not_started' to 'completed'" {
					t.Fatal(fe)
				}
			}},
		{"a status without details", func(context.Context) error { return status.Error(codes.Internal, "boom") }, []error{flowstate.ErrInternal},
			func(t *testing.T, fe *flowstate.Error) {
				if fe.Code != flowstate.CodeInternal || fe.FlowError != nil {
					t.Fatal(fe)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			server := (&fakeServer{getFlow: func(ctx context.Context, _ *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
				return nil, c.err(ctx)
			}}).serve(t, "")
			_, err := newTestClient(t, server.address, flowstate.WithRetryPolicy(flowstate.NoRetry())).GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"})
			for _, target := range c.is {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(%v, %v) = false", err, target)
				}
			}
			var fe *flowstate.Error
			if !errors.As(err, &fe) {
				t.Fatalf("%T", err)
			}
			if c.check != nil {
				c.check(t, fe)
			}
		})
	}
}

// collect runs a watch to its end (or limit events) and returns the events and the final error.
func collect(seq func(func(*flowstatev1.FlowEvent, error) bool), limit int) ([]*flowstatev1.FlowEvent, error) {
	var events []*flowstatev1.FlowEvent
	var final error
	for event, err := range seq {
		if err != nil {
			final = err
			break
		}
		events = append(events, event)
		if len(events) >= limit {
			break
		}
	}
	return events, final
}

func versions(events []*flowstatev1.FlowEvent) []int64 {
	result := make([]int64, 0, len(events))
	for _, event := range events {
		result = append(result, event.GetFlowVersion())
	}
	return result
}

func TestWatchResumesWithoutDuplicates(t *testing.T) {
	var mu sync.Mutex
	var requests []*flowstatev1.WatchFlowRequest
	server := (&fakeServer{watchFlow: func(req *flowstatev1.WatchFlowRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowResponse]) error {
		mu.Lock()
		requests = append(requests, req)
		n := len(requests)
		mu.Unlock()
		active := flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING
		switch n {
		case 1:
			_ = stream.Send(snapshotEvent(1, flowstatev1.FlowStatus_FLOW_STATUS_INITIALIZED))
			_ = stream.Send(changeEvent(2, active))
			_ = stream.Send(changeEvent(3, active))
			return recorded(stream.Context(), "server_shutting_down")
		case 2:
			_ = stream.Send(changeEvent(3, active)) // replayed again: must not be yielded twice
			_ = stream.Send(changeEvent(4, active))
			return recorded(stream.Context(), "subscriber_too_slow")
		default:
			_ = stream.Send(heartbeatEvent())
			_ = stream.Send(changeEvent(5, flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED))
			_ = stream.Send(changeEvent(6, flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED)) // never read
			return nil
		}
	}}).serve(t, "")
	client := newTestClient(t, server.address)
	var reconnects []flowstate.Code
	events, err := collect(client.Watch(testContext(t), "f1", flowstate.OnReconnect(func(e *flowstate.Error, _ int, _ time.Duration) {
		reconnects = append(reconnects, e.Code)
	})), 100)
	if err != nil {
		t.Fatal(err)
	}
	if got := versions(events); !slices.Equal(got, []int64{1, 2, 3, 4, 5}) {
		t.Fatalf("versions = %v", got)
	}
	if events[0].GetSnapshot() == nil {
		t.Fatal("the first event is not the snapshot")
	}
	var after []any
	for _, r := range requests {
		if r.AfterVersion == nil {
			after = append(after, nil)
		} else {
			after = append(after, r.GetAfterVersion())
		}
	}
	if !slices.Equal(after, []any{nil, int64(3), int64(4)}) {
		t.Fatalf("after versions = %v", after)
	}
	if !slices.Equal(reconnects, []flowstate.Code{flowstate.CodeServerShuttingDown, flowstate.CodeSubscriberTooSlow}) {
		t.Fatalf("reconnects = %v", reconnects)
	}
}

func TestWatchOptions(t *testing.T) {
	var request *flowstatev1.WatchFlowRequest
	server := (&fakeServer{watchFlow: func(req *flowstatev1.WatchFlowRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowResponse]) error {
		request = req
		_ = stream.Send(heartbeatEvent())
		_ = stream.Send(changeEvent(8, flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED))
		_ = stream.Send(changeEvent(9, flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED))
		<-stream.Context().Done()
		return nil
	}}).serve(t, "")
	client := newTestClient(t, server.address)
	events, err := collect(client.Watch(testContext(t), "f1", flowstate.AfterVersion(7), flowstate.KeepOpen(), flowstate.IncludeHeartbeats()), 3)
	if err != nil {
		t.Fatal(err)
	}
	if events[0].GetHeartbeat() == nil || !slices.Equal(versions(events[1:]), []int64{8, 9}) {
		t.Fatalf("events = %v", events)
	}
	if request.GetAfterVersion() != 7 || !request.GetKeepOpen() {
		t.Fatalf("request = %v", request)
	}
}

func TestWatchEndsWithARefusal(t *testing.T) {
	server := (&fakeServer{watchFlow: func(_ *flowstatev1.WatchFlowRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowResponse]) error {
		return recorded(stream.Context(), "flow_not_found")
	}}).serve(t, "")
	_, err := collect(newTestClient(t, server.address).Watch(testContext(t), "f1"), 10)
	if !errors.Is(err, flowstate.ErrFlowNotFound) {
		t.Fatalf("err = %v", err)
	}
}

func TestWatchResumesAcrossAKilledServer(t *testing.T) {
	var mu sync.Mutex
	var afters []int64
	reachedTwo := make(chan struct{})
	fake := &fakeServer{}
	fake.watchFlow = func(req *flowstatev1.WatchFlowRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowResponse]) error {
		mu.Lock()
		afters = append(afters, req.GetAfterVersion())
		first := len(afters) == 1
		mu.Unlock()
		if first {
			_ = stream.Send(snapshotEvent(1, flowstatev1.FlowStatus_FLOW_STATUS_INITIALIZED))
			_ = stream.Send(changeEvent(2, flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING))
			<-stream.Context().Done()
			return nil
		}
		_ = stream.Send(changeEvent(2, flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING))
		_ = stream.Send(changeEvent(3, flowstatev1.FlowStatus_FLOW_STATUS_CANCELLED))
		return nil
	}
	fake.serve(t, "")
	client := newTestClient(t, fake.address)
	var seen []int64
	once := sync.Once{}
	for event, err := range client.Watch(testContext(t), "f1") {
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, event.GetFlowVersion())
		if event.GetFlowVersion() == 2 {
			once.Do(func() {
				close(reachedTwo)
				address := fake.address
				fake.kill()
				fake.serve(t, address)
			})
		}
	}
	if !slices.Equal(seen, []int64{1, 2, 3}) || !slices.Equal(afters, []int64{0, 2}) {
		t.Fatalf("seen %v, after versions %v", seen, afters)
	}
}

func TestWatchGivesUpWhenThePolicyRunsOut(t *testing.T) {
	server := (&fakeServer{}).serve(t, "")
	server.kill()
	client := newTestClient(t, server.address)
	policy := flowstate.RetryPolicy{MaxAttempts: -1, InitialBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, Deadline: 200 * time.Millisecond}
	_, err := collect(client.Watch(testContext(t), "f1", flowstate.WatchRetry(policy)), 10)
	if !errors.Is(err, flowstate.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
}

func TestBreakingOutOfAWatchCancelsTheStream(t *testing.T) {
	cancelled := make(chan struct{}, 10)
	server := (&fakeServer{watchFlow: func(_ *flowstatev1.WatchFlowRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowResponse]) error {
		_ = stream.Send(snapshotEvent(1, flowstatev1.FlowStatus_FLOW_STATUS_INITIALIZED))
		<-stream.Context().Done()
		cancelled <- struct{}{}
		return nil
	}}).serve(t, "")
	client := newTestClient(t, server.address)
	for event := range client.Watch(testContext(t), "f1") {
		if event.GetFlowVersion() != 1 {
			t.Fatal(event)
		}
		break
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the server's stream was not cancelled")
	}

	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	var final error
	for event, err := range client.Watch(ctx, "f1") {
		if err != nil {
			final = err
			break
		}
		if event.GetFlowVersion() == 1 {
			cancel()
		}
	}
	if !errors.Is(final, flowstate.ErrCanceled) {
		t.Fatalf("after cancel: %v", final)
	}
}

func TestWatchFlowsResumesByCursor(t *testing.T) {
	var mu sync.Mutex
	var cursors []string
	server := (&fakeServer{watchFlows: func(req *flowstatev1.WatchFlowsRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowsResponse]) error {
		mu.Lock()
		cursors = append(cursors, req.GetCursor())
		n := len(cursors)
		mu.Unlock()
		send := func(flowID string, version int64) {
			event := changeEvent(version, flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING).GetEvent()
			event.FlowId = flowID
			_ = stream.Send(&flowstatev1.WatchFlowsResponse{Event: event, Cursor: flowID + "-" + string(rune('0'+version))})
		}
		if n == 1 {
			send("a", 1)
			send("b", 1)
			return recorded(stream.Context(), "server_shutting_down")
		}
		send("b", 1)
		send("a", 2)
		<-stream.Context().Done()
		return nil
	}}).serve(t, "")
	client := newTestClient(t, server.address)
	var seen []string
	for event, err := range client.WatchFlows(testContext(t), flowstate.Filter(&flowstatev1.WatchFlowsRequest{DefinitionName: "discovery"})) {
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, event.Event.GetFlowId()+"@"+string(rune('0'+event.Event.GetFlowVersion())))
		if len(seen) == 3 {
			break
		}
	}
	if !slices.Equal(seen, []string{"a@1", "b@1", "a@2"}) || !slices.Equal(cursors, []string{"", "b-1"}) {
		t.Fatalf("seen %v, cursors %v", seen, cursors)
	}
}

func TestWatchTreeResumesByCursorAndEndsAfterTheTerminalTransaction(t *testing.T) {
	var mu sync.Mutex
	var requests []*flowstatev1.WatchFlowRequest
	server := (&fakeServer{watchFlow: func(req *flowstatev1.WatchFlowRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowResponse]) error {
		mu.Lock()
		requests = append(requests, req)
		n := len(requests)
		mu.Unlock()
		send := func(flowID string, version int64, cursor string, status flowstatev1.FlowStatus) {
			event := changeEvent(version, status).GetEvent()
			event.FlowId = flowID
			relation := flowstatev1.WatchRelation_WATCH_RELATION_DESCENDANT
			if flowID == "p" {
				relation = flowstatev1.WatchRelation_WATCH_RELATION_SELF
			}
			_ = stream.Send(&flowstatev1.WatchFlowResponse{Event: event, Cursor: cursor, Relation: relation})
		}
		active, cancelled := flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING, flowstatev1.FlowStatus_FLOW_STATUS_CANCELLED
		if n == 1 {
			send("p", 1, "", active)
			send("k", 1, "c1", active)
			return recorded(stream.Context(), "server_shutting_down")
		}
		send("k", 1, "c1", active) // replayed: not yielded twice
		send("p", 2, "c2", cancelled)
		send("k", 2, "c3", cancelled) // the same transaction: still yielded
		return nil                    // a clean end after the terminal event: the end
	}}).serve(t, "")
	client := newTestClient(t, server.address)
	var seen []string
	for response, err := range client.WatchTree(testContext(t), "p", flowstate.ChildrenDepth(1)) {
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, response.GetEvent().GetFlowId()+"@"+string(rune('0'+response.GetEvent().GetFlowVersion()))+":"+response.GetCursor())
	}
	if !slices.Equal(seen, []string{"p@1:", "k@1:c1", "p@2:c2", "k@2:c3"}) {
		t.Fatalf("seen %v", seen)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(requests) != 2 || requests[1].GetCursor() != "c1" || requests[1].GetChildrenDepth() != 1 || requests[0].AfterVersion != nil {
		t.Fatalf("requests %v", requests)
	}
}

func TestDialWaitsForTheConnection(t *testing.T) {
	server := (&fakeServer{getFlow: func(context.Context, *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
		return &flowstatev1.GetFlowResponse{Flow: &flowstatev1.Flow{FlowId: "f1"}}, nil
	}}).serve(t, "")
	client, err := flowstate.Dial(testContext(t), server.address, flowstate.WithToken("t"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if resp, err := client.GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"}); err != nil || resp.GetFlow().GetFlowId() != "f1" {
		t.Fatalf("%v %v", resp, err)
	}

	server.kill()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := flowstate.Dial(ctx, server.address); !errors.Is(err, flowstate.ErrDeadlineExceeded) {
		t.Fatalf("Dial to a closed port: %v", err)
	}
}

// Close ends open watches at once: neither the closing connection's CANCELLED nor a pending
// reconnection wait makes them go on (they used to reconnect for two minutes).
func TestCloseEndsOpenWatches(t *testing.T) {
	var mu sync.Mutex
	opened := 0
	server := (&fakeServer{
		watchFlow: func(_ *flowstatev1.WatchFlowRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowResponse]) error {
			mu.Lock()
			opened++
			mu.Unlock()
			_ = stream.Send(snapshotEvent(1, flowstatev1.FlowStatus_FLOW_STATUS_INITIALIZED))
			<-stream.Context().Done()
			return nil
		},
		watchFlows: func(_ *flowstatev1.WatchFlowsRequest, stream grpc.ServerStreamingServer[flowstatev1.WatchFlowsResponse]) error {
			_ = stream.Send(&flowstatev1.WatchFlowsResponse{Event: changeEvent(1, flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING).GetEvent(), Cursor: "c1"})
			return unavailable(stream.Context()) // then a 60 s wait before reconnecting
		},
	}).serve(t, "")
	slow := flowstate.RetryPolicy{MaxAttempts: -1, InitialBackoff: time.Minute, MaxBackoff: time.Minute, Deadline: 10 * time.Minute}
	client := newTestClient(t, server.address, flowstate.WithWatchRetryPolicy(slow))
	ctx := testContext(t)
	type result struct {
		seen int
		err  error
	}
	results := make(chan result, 2)
	first := make(chan struct{}, 2)
	go func() {
		r := result{}
		for _, err := range client.Watch(ctx, "f1") {
			if err != nil {
				r.err = err
				break
			}
			r.seen++
			first <- struct{}{}
		}
		results <- r
	}()
	go func() {
		r := result{}
		for _, err := range client.WatchFlows(ctx) {
			if err != nil {
				r.err = err
				break
			}
			r.seen++
			first <- struct{}{}
		}
		results <- r
	}()
	<-first
	<-first
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case r := <-results:
			if r.err != nil || r.seen != 1 {
				t.Fatalf("after Close: %d events, error %v", r.seen, r.err)
			}
		case <-ctx.Done():
			t.Fatal("a watch went on after Close")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if opened != 1 {
		t.Fatalf("WatchFlow opened %d times", opened)
	}
}

func TestErrorUnwrapsToTheContextError(t *testing.T) {
	server := (&fakeServer{getFlow: func(ctx context.Context, _ *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}}).serve(t, "")
	client := newTestClient(t, server.address, flowstate.WithTimeout(0))
	ctx, cancel := context.WithTimeout(testContext(t), 50*time.Millisecond)
	defer cancel()
	_, err := client.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: "f1"})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, flowstate.ErrDeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if !errors.Is(flowstate.Convert(status.Error(codes.Canceled, "gone")), context.Canceled) {
		t.Fatal("a CANCELLED status does not unwrap to context.Canceled")
	}
	if errors.Is(flowstate.Convert(status.Error(codes.NotFound, "no")), context.Canceled) {
		t.Fatal("NOT_FOUND unwraps to context.Canceled")
	}
}

func TestCallRetryOverridesThePolicyForOneCall(t *testing.T) {
	attempts := 0
	server := (&fakeServer{getFlow: func(ctx context.Context, _ *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
		attempts++
		return nil, unavailable(ctx)
	}}).serve(t, "")
	client := newTestClient(t, server.address)
	_, err := client.GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"}, flowstate.CallRetry(flowstate.NoRetry()))
	if !errors.Is(err, flowstate.ErrUnavailable) || attempts != 1 {
		t.Fatalf("with NoRetry: %d attempts, %v", attempts, err)
	}
	attempts = 0
	_, _ = client.GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"})
	if attempts != 5 {
		t.Fatalf("with the client's policy: %d attempts", attempts)
	}
}

func TestHistoryFetchesPagesLazily(t *testing.T) {
	var tokens []string
	server := (&fakeServer{listFlowHistory: func(_ context.Context, req *flowstatev1.ListFlowHistoryRequest) (*flowstatev1.ListFlowHistoryResponse, error) {
		tokens = append(tokens, req.GetPageToken())
		page := len(tokens)
		return &flowstatev1.ListFlowHistoryResponse{
			HistoryEntries: []*flowstatev1.HistoryEntry{{FlowVersion: int64(2*page - 1)}, {FlowVersion: int64(2 * page)}},
			NextPageToken:  fmt.Sprintf("p%d", page+1),
		}, nil
	}}).serve(t, "")
	client := newTestClient(t, server.address)
	var versions []int64
	for entry, err := range client.History(testContext(t), "f1", 0) {
		if err != nil {
			t.Fatal(err)
		}
		versions = append(versions, entry.GetFlowVersion())
		if len(versions) == 3 {
			break
		}
	}
	if !slices.Equal(versions, []int64{1, 2, 3}) || !slices.Equal(tokens, []string{"", "p2"}) {
		t.Fatalf("versions %v, page tokens %v", versions, tokens)
	}
}

func TestClientHeaderAndEnvironment(t *testing.T) {
	server := (&fakeServer{getFlow: func(context.Context, *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
		return &flowstatev1.GetFlowResponse{}, nil
	}}).serve(t, "")
	t.Setenv("FLOWSTATE_ADDRESS", server.address)
	t.Setenv("FLOWSTATE_TOKEN", "env-token")
	client, err := flowstate.NewClient("")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"}); err != nil {
		t.Fatal(err)
	}
	if got := server.headers(); !slices.Equal(got, []string{"Bearer env-token"}) {
		t.Fatalf("authorization = %v", got)
	}
	server.mu.Lock()
	got := server.clientHeader
	server.mu.Unlock()
	if !slices.Equal(got, []string{"go/" + flowstate.Version}) {
		t.Fatalf("x-flowstate-client = %v", got)
	}
	// Explicit arguments win; a missing certificate file is named.
	t.Setenv("FLOWSTATE_TLS_CA_FILE", "/nonexistent/ca.pem")
	if _, err := flowstate.NewClient(server.address, flowstate.WithToken("mine")); err == nil || !strings.Contains(err.Error(), "FLOWSTATE_TLS_CA_FILE=/nonexistent/ca.pem") {
		t.Fatalf("err = %v", err)
	}
	if _, err := flowstate.NewClient(server.address, flowstate.WithoutEnvironment()); err != nil {
		t.Fatal(err)
	}
}

// The fake replays every recorded error exactly: a plain gRPC client receives the recorded
// status (re-marshalled, the same bytes as grpc-status-details-bin in the file) and trailers.
func TestFakeReplaysTheRecordedErrorsByteForByte(t *testing.T) {
	entries, err := os.ReadDir(filepath.Join("..", "..", "..", "tests", "fixtures", "errors"))
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range entries {
		name := strings.TrimSuffix(entry.Name(), ".json")
		t.Run(name, func(t *testing.T) {
			server := (&fakeServer{getFlow: func(ctx context.Context, _ *flowstatev1.GetFlowRequest) (*flowstatev1.GetFlowResponse, error) {
				return nil, recorded(ctx, name)
			}}).serve(t, "")
			conn, err := grpc.NewClient(server.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = conn.Close() }()
			var trailer metadata.MD
			_, err = flowstatev1.NewFlowStateServiceClient(conn).GetFlow(testContext(t), &flowstatev1.GetFlowRequest{FlowId: "f1"}, grpc.Trailer(&trailer))
			fixture := loadErrorFixture(name)
			st := status.Convert(err)
			received, marshalErr := proto.MarshalOptions{Deterministic: true}.Marshal(st.Proto())
			if marshalErr != nil {
				t.Fatal(marshalErr)
			}
			if st.Code() != fixture.GRPCStatus || st.Message() != fixture.Message || !bytes.Equal(received, fixture.DetailsBin) {
				t.Fatalf("received %v %q %x, recorded %v %q %x", st.Code(), st.Message(), received, fixture.GRPCStatus, fixture.Message, fixture.DetailsBin)
			}
			if got := trailer.Get("x-correlation-id"); !slices.Equal(got, []string{fixture.Trailers["x-correlation-id"]}) {
				t.Fatalf("x-correlation-id = %v", got)
			}
		})
	}
}
