package flowstate_test

// End-to-end tests of the wrapper against a real `flowstate serve` started by
// scripts/with_test_server.py, which exports FLOWSTATE_TEST_ADDRESS and the tokens.
//
// Policy: without FLOWSTATE_TEST_ADDRESS these tests FAIL under CI=true and are SKIPPED (with a
// loud banner on stderr) when run by hand. Run them with `make test`, or from clients/go:
// ../../scripts/with_test_server.py -- go test ./...

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

type testServer struct {
	address, token, adminToken, otherTenantToken, readonlyToken string
	retentionToken                                              string // retention:admin
	restartCmd, hardRestartCmd, stopCmd, startCmd               string
}

var (
	e2eServer *testServer
	inCI      = os.Getenv("CI") == "true" || os.Getenv("CI") == "1"
	phases    = []string{"data_import", "field_mapping", "data_cleansing", "asset_inventory", "dependency_analysis"}
	// DESIGN.md "Progress" and "Flow status": each phase started (x 0.3) then completed.
	progressSteps = []float64{6, 20, 26, 40, 46, 60, 66, 80, 86, 100}
	statusSteps   = []flowstatev1.FlowStatus{
		flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING, flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING,
		flowstatev1.FlowStatus_FLOW_STATUS_DISCOVERY, flowstatev1.FlowStatus_FLOW_STATUS_DISCOVERY,
		flowstatev1.FlowStatus_FLOW_STATUS_DISCOVERY, flowstatev1.FlowStatus_FLOW_STATUS_DISCOVERY,
		flowstatev1.FlowStatus_FLOW_STATUS_ASSESSMENT_READY, flowstatev1.FlowStatus_FLOW_STATUS_ASSESSMENT_READY,
		flowstatev1.FlowStatus_FLOW_STATUS_PLANNING, flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED,
	}
)

const (
	inProgress = flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS
	completed  = flowstatev1.PhaseState_PHASE_STATE_COMPLETED
)

func TestMain(m *testing.M) {
	if address := os.Getenv("FLOWSTATE_TEST_ADDRESS"); address != "" {
		e2eServer = &testServer{
			address:          address,
			token:            os.Getenv("FLOWSTATE_TEST_TOKEN"),
			adminToken:       os.Getenv("FLOWSTATE_TEST_TOKEN_ADMIN"),
			otherTenantToken: os.Getenv("FLOWSTATE_TEST_TOKEN_OTHER_TENANT"),
			readonlyToken:    os.Getenv("FLOWSTATE_TEST_TOKEN_READONLY"),
			retentionToken:   os.Getenv("FLOWSTATE_TEST_TOKEN_RETENTION"),
			restartCmd:       os.Getenv("FLOWSTATE_TEST_RESTART_CMD"),
			hardRestartCmd:   os.Getenv("FLOWSTATE_TEST_HARD_RESTART_CMD"),
			stopCmd:          os.Getenv("FLOWSTATE_TEST_STOP_CMD"),
			startCmd:         os.Getenv("FLOWSTATE_TEST_START_CMD"),
		}
	} else if !inCI {
		line := strings.Repeat("!", 100)
		fmt.Fprintf(os.Stderr, "\n%s\n!! FLOWSTATE_TEST_ADDRESS is not set: the end-to-end tests against a real server are SKIPPED.\n"+
			"!! Run them with `make test` or ../../scripts/with_test_server.py -- go test ./... (under CI=true they fail).\n%s\n\n", line, line)
	}
	os.Exit(m.Run())
}

// server returns the harness's server, failing the test under CI and skipping it otherwise.
func server(t *testing.T) *testServer {
	t.Helper()
	if e2eServer == nil {
		if inCI {
			t.Fatal("CI=true but FLOWSTATE_TEST_ADDRESS is not set: run the tests through scripts/with_test_server.py")
		}
		t.Skip("FLOWSTATE_TEST_ADDRESS is not set (see the banner above)")
	}
	for name, value := range map[string]string{"token": e2eServer.token, "admin": e2eServer.adminToken, "other tenant": e2eServer.otherTenantToken, "read-only": e2eServer.readonlyToken, "retention": e2eServer.retentionToken} {
		if value == "" {
			t.Fatalf("FLOWSTATE_TEST_ADDRESS is set but the %s token is not (use scripts/with_test_server.py)", name)
		}
	}
	return e2eServer
}

func e2eClient(t *testing.T, token string, options ...flowstate.Option) *flowstate.Client {
	t.Helper()
	fast := flowstate.RetryPolicy{MaxAttempts: -1, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Deadline: 60 * time.Second}
	options = append([]flowstate.Option{flowstate.WithToken(token), flowstate.WithRetryPolicy(fast), flowstate.WithWatchRetryPolicy(fast)}, options...)
	client, err := flowstate.NewClient(server(t).address, options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func e2eContext(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func newFlow(ctx context.Context, t *testing.T, client *flowstate.Client) string {
	t.Helper()
	resp, err := client.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "discovery", DisplayName: "sdk-go e2e"})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetFlow().GetFlowId()
}

func move(ctx context.Context, client *flowstate.Client, flowID, phase string, target flowstatev1.PhaseState) (*flowstatev1.TransitionPhaseResponse, error) {
	return client.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{FlowId: flowID, Phase: phase, TargetState: target, Reason: "e2e"})
}

func mustMove(ctx context.Context, t *testing.T, client *flowstate.Client, flowID, phase string, target flowstatev1.PhaseState) *flowstatev1.Flow {
	t.Helper()
	resp, err := move(ctx, client, flowID, phase, target)
	if err != nil {
		t.Fatalf("%s -> %s: %v", phase, target, err)
	}
	return resp.GetFlow()
}

// runToCompletion starts and completes every phase from index from; returns the flow after each step.
func runToCompletion(ctx context.Context, t *testing.T, client *flowstate.Client, flowID string, from int) []*flowstatev1.Flow {
	t.Helper()
	var steps []*flowstatev1.Flow
	for _, phase := range phases[from:] {
		steps = append(steps, mustMove(ctx, t, client, flowID, phase, inProgress), mustMove(ctx, t, client, flowID, phase, completed))
	}
	return steps
}

func span(from, to int64) []int64 {
	var result []int64
	for v := from; v <= to; v++ {
		result = append(result, v)
	}
	return result
}

// expectError checks that err is a *flowstate.Error with the code and gRPC code; returns it.
func expectError(t *testing.T, err error, sentinel error, grpcCode codes.Code) *flowstate.Error {
	t.Helper()
	var fe *flowstate.Error
	if !errors.As(err, &fe) {
		t.Fatalf("want %v, got %v (%T)", sentinel, err, err)
	}
	if !errors.Is(err, sentinel) || fe.GRPCCode != grpcCode {
		t.Fatalf("want %v (%v), got %v (%v)", sentinel, grpcCode, err, fe.GRPCCode)
	}
	return fe
}

func TestE2ECreateAndCompleteWithExactProgress(t *testing.T) {
	ctx := e2eContext(t, 60*time.Second)
	client := e2eClient(t, server(t).token)
	created, err := client.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "discovery", Labels: map[string]string{"suite": "go"}})
	if err != nil {
		t.Fatal(err)
	}
	flow := created.GetFlow()
	if flow.GetStatus() != flowstatev1.FlowStatus_FLOW_STATUS_INITIALIZED || flow.GetVersion() != 1 || flow.GetProgress() != 0 || len(flow.GetPhases()) != 5 {
		t.Fatalf("created %v", flow)
	}
	steps := runToCompletion(ctx, t, client, flow.GetFlowId(), 0)
	for i, step := range steps {
		if step.GetProgress() != progressSteps[i] || step.GetStatus() != statusSteps[i] || step.GetVersion() != int64(i+2) {
			t.Errorf("step %d: progress %v status %v version %d; want %v %v %d", i, step.GetProgress(), step.GetStatus(), step.GetVersion(), progressSteps[i], statusSteps[i], i+2)
		}
	}
	history, err := allHistory(ctx, client, flow.GetFlowId())
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, entry := range history {
		got = append(got, entry.GetFlowVersion())
	}
	if !slices.Equal(got, span(1, 11)) {
		t.Fatalf("history versions %v", got)
	}
	if last := history[len(history)-1]; last.GetUserId() != "writer" || last.GetProgressAfter() != 100 || last.GetRequestId() == "" {
		t.Fatalf("last entry %v", last)
	}
	progress, err := client.UpdatePhaseProgress(ctx, &flowstatev1.UpdatePhaseProgressRequest{FlowId: newFlowStarted(ctx, t, client), Phase: "data_import", Progress: 0.5})
	if err != nil || progress.GetFlow().GetProgress() != 10 {
		t.Fatalf("in-phase progress 0.5: %v %v", progress.GetFlow().GetProgress(), err)
	}
}

func newFlowStarted(ctx context.Context, t *testing.T, client *flowstate.Client) string {
	t.Helper()
	flowID := newFlow(ctx, t, client)
	mustMove(ctx, t, client, flowID, "data_import", inProgress)
	return flowID
}

func TestE2EReadsAndDryRun(t *testing.T) {
	ctx := e2eContext(t, 60*time.Second)
	client := e2eClient(t, server(t).token)
	flowID := newFlow(ctx, t, client)
	list, err := client.ListFlows(ctx, &flowstatev1.ListFlowsRequest{PageSize: 500})
	if err != nil || !slices.ContainsFunc(list.GetFlows(), func(f *flowstatev1.Flow) bool { return f.GetFlowId() == flowID }) {
		t.Fatalf("ListFlows: %v", err)
	}
	definition, err := client.GetFlowDefinition(ctx, nil)
	if err != nil || len(definition.GetDefinition().GetPhases()) != 5 {
		t.Fatalf("GetFlowDefinition: %v %v", definition, err)
	}
	answer, err := client.ValidateTransition(ctx, &flowstatev1.ValidateTransitionRequest{FlowId: flowID, Transition: &flowstatev1.ValidateTransitionRequest_PhaseTransition{
		PhaseTransition: &flowstatev1.PhaseTransition{Phase: "field_mapping", ToState: inProgress},
	}})
	if err != nil || answer.GetAllowed() || flowstate.CodeOf(answer.GetError().GetErrorCode()) != flowstate.CodePhaseOrderViolation || !slices.Equal(answer.GetBlockingPhases(), []string{"data_import"}) {
		t.Fatalf("ValidateTransition: %v %v", answer, err)
	}
}

func TestE2ETypedErrors(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 120*time.Second)
	writer := e2eClient(t, srv.token)

	t.Run("INVALID_PHASE_TRANSITION", func(t *testing.T) {
		_, err := move(ctx, writer, newFlow(ctx, t, writer), "data_import", completed)
		fe := expectError(t, err, flowstate.ErrInvalidPhaseTransition, codes.FailedPrecondition)
		if !slices.Equal(fe.ValidTransitions(), []flowstatev1.PhaseState{inProgress}) || fe.Phase() != "data_import" || fe.CorrelationID == "" || fe.FlowError == nil || fe.RetryAllowed {
			t.Fatalf("%+v", fe)
		}
	})
	t.Run("PHASE_ORDER_VIOLATION", func(t *testing.T) {
		_, err := move(ctx, writer, newFlow(ctx, t, writer), "field_mapping", inProgress)
		fe := expectError(t, err, flowstate.ErrPhaseOrderViolation, codes.FailedPrecondition)
		if !slices.Equal(fe.BlockingPhases(), []string{"data_import"}) {
			t.Fatal(fe.BlockingPhases())
		}
	})
	t.Run("VERSION_CONFLICT", func(t *testing.T) {
		flowID := newFlowStarted(ctx, t, writer)
		_, err := writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{FlowId: flowID, Phase: "data_import", TargetState: completed, ExpectedVersion: proto.Int64(1)})
		fe := expectError(t, err, flowstate.ErrVersionConflict, codes.Aborted)
		if v, ok := fe.CurrentVersion(); !ok || v != 2 {
			t.Fatalf("current version %d %v", v, ok)
		}
	})
	t.Run("FLOW_NOT_FOUND for another tenant", func(t *testing.T) {
		flowID := newFlow(ctx, t, writer)
		intruder := e2eClient(t, srv.otherTenantToken)
		_, err := intruder.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: flowID})
		expectError(t, err, flowstate.ErrFlowNotFound, codes.NotFound)
		_, err = move(ctx, intruder, flowID, "data_import", inProgress)
		expectError(t, err, flowstate.ErrFlowNotFound, codes.NotFound)
	})
	t.Run("UNAUTHENTICATED", func(t *testing.T) {
		_, err := e2eClient(t, "").GetFlowDefinition(ctx, nil)
		fe := expectError(t, err, flowstate.ErrUnauthenticated, codes.Unauthenticated)
		if fe.Code != flowstate.CodeUnauthenticated {
			t.Fatal(fe.Code)
		}
		_, err = e2eClient(t, srv.token[:len(srv.token)-4]+"AAAA").GetFlowDefinition(ctx, nil)
		expectError(t, err, flowstate.ErrUnauthenticated, codes.Unauthenticated)
	})
	t.Run("PERMISSION_DENIED for read-only", func(t *testing.T) {
		flowID := newFlow(ctx, t, writer)
		reader := e2eClient(t, srv.readonlyToken)
		_, err := reader.CreateFlow(ctx, nil)
		expectError(t, err, flowstate.ErrPermissionDenied, codes.PermissionDenied)
		_, err = move(ctx, reader, flowID, "data_import", inProgress)
		expectError(t, err, flowstate.ErrPermissionDenied, codes.PermissionDenied)
		if _, err := reader.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: flowID}); err != nil {
			t.Fatalf("a reader may read: %v", err)
		}
	})
	t.Run("INVALID_PHASE and MALFORMED_REQUEST", func(t *testing.T) {
		_, err := move(ctx, writer, newFlow(ctx, t, writer), "no_such_phase", inProgress)
		expectError(t, err, flowstate.ErrInvalidPhase, codes.InvalidArgument)
		_, err = writer.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: "not-a-uuid"})
		fe := expectError(t, err, flowstate.ErrMalformedRequest, codes.InvalidArgument)
		if len(fe.FieldViolations) != 1 || fe.FieldViolations[0].GetField() != "flow_id" {
			t.Fatal(fe.FieldViolations)
		}
	})
	t.Run("FLOW_PAUSED and FLOW_TERMINAL", func(t *testing.T) {
		flowID := newFlow(ctx, t, writer)
		if _, err := writer.PauseFlow(ctx, &flowstatev1.PauseFlowRequest{FlowId: flowID}); err != nil {
			t.Fatal(err)
		}
		_, err := move(ctx, writer, flowID, "data_import", inProgress)
		expectError(t, err, flowstate.ErrFlowPaused, codes.FailedPrecondition)
		if _, err := writer.ResumeFlow(ctx, &flowstatev1.ResumeFlowRequest{FlowId: flowID}); err != nil {
			t.Fatal(err)
		}
		if _, err := writer.CancelFlow(ctx, &flowstatev1.CancelFlowRequest{FlowId: flowID}); err != nil {
			t.Fatal(err)
		}
		_, err = move(ctx, writer, flowID, "data_import", inProgress)
		expectError(t, err, flowstate.ErrFlowTerminal, codes.FailedPrecondition)
	})
	t.Run("DEPENDENT_PHASES_ACTIVE", func(t *testing.T) {
		flowID := newFlowStarted(ctx, t, writer)
		mustMove(ctx, t, writer, flowID, "data_import", completed)
		mustMove(ctx, t, writer, flowID, "field_mapping", inProgress)
		_, err := writer.Rollback(ctx, &flowstatev1.RollbackRequest{FlowId: flowID, Phase: "data_import", Cascade: proto.Bool(false)})
		fe := expectError(t, err, flowstate.ErrDependentPhasesActive, codes.FailedPrecondition)
		if !slices.Equal(fe.DependentPhases(), []string{"field_mapping"}) {
			t.Fatal(fe.DependentPhases())
		}
		rolled, err := writer.Rollback(ctx, &flowstatev1.RollbackRequest{FlowId: flowID, Phase: "data_import"})
		if err != nil || len(rolled.GetHistoryEntries()) != 2 {
			t.Fatalf("cascade rollback: %v %v", rolled, err)
		}
	})
	t.Run("MAX_RETRIES_EXCEEDED and RETRY_NOT_ALLOWED", func(t *testing.T) {
		flowID := newFlowStarted(ctx, t, writer)
		fail := func(id string, code flowstatev1.ErrorCode) {
			t.Helper()
			if _, err := writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{FlowId: id, Phase: "data_import", TargetState: flowstatev1.PhaseState_PHASE_STATE_FAILED,
				Failure: &flowstatev1.PhaseFailure{ErrorCode: code, Message: "boom"}}); err != nil {
				t.Fatal(err)
			}
		}
		retry := func(id string, force bool, c *flowstate.Client) (*flowstatev1.RetryResponse, error) {
			return c.Retry(ctx, &flowstatev1.RetryRequest{FlowId: id, Phase: "data_import", Force: force})
		}
		fail(flowID, flowstatev1.ErrorCode_ERROR_CODE_PHASE_EXECUTION_FAILED)
		for attempt := int32(1); attempt <= 3; attempt++ {
			if _, err := retry(flowID, false, writer); err != nil {
				t.Fatal(err)
			}
			resp, err := retry(flowID, false, writer)
			if err != nil || resp.GetFlow().GetPhases()[0].GetRetryCount() != attempt {
				t.Fatalf("attempt %d: %v %v", attempt, resp, err)
			}
			fail(flowID, flowstatev1.ErrorCode_ERROR_CODE_PHASE_EXECUTION_FAILED)
		}
		// Every retry step is gated, FAILED -> RETRY_NEEDED too: refused, and refused again.
		for range 2 {
			_, err := retry(flowID, false, writer)
			fe := expectError(t, err, flowstate.ErrMaxRetriesExceeded, codes.FailedPrecondition)
			if n, ok := fe.AttemptsRemaining(); !ok || n != 0 {
				t.Fatalf("attempts remaining %d %v", n, ok)
			}
		}
		still, err := writer.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: flowID})
		if err != nil {
			t.Fatal(err)
		}
		if p := still.GetFlow().GetPhases()[0]; p.GetState() != flowstatev1.PhaseState_PHASE_STATE_FAILED || p.GetRetryCount() != 3 {
			t.Fatalf("after exhaustion: %v", p)
		}

		other := newFlowStarted(ctx, t, writer)
		fail(other, flowstatev1.ErrorCode_ERROR_CODE_DATA_VALIDATION_FAILED)
		_, err = retry(other, false, writer)
		expectError(t, err, flowstate.ErrRetryNotAllowed, codes.FailedPrecondition)
		_, err = retry(other, true, writer)
		expectError(t, err, flowstate.ErrPermissionDenied, codes.PermissionDenied)
		forced, err := retry(other, true, e2eClient(t, srv.adminToken))
		if err != nil || forced.GetFlow().GetPhases()[0].GetState() != flowstatev1.PhaseState_PHASE_STATE_RETRY_NEEDED {
			t.Fatalf("admin force: %v %v", forced, err)
		}
	})
}

func TestE2ERetrySafety(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	writer := e2eClient(t, srv.token)

	t.Run("same request id twice applies once", func(t *testing.T) {
		flowID := newFlow(ctx, t, writer)
		request := &flowstatev1.TransitionPhaseRequest{FlowId: flowID, Phase: "data_import", TargetState: inProgress, RequestId: flowstate.NewRequestID()}
		first, err := writer.TransitionPhase(ctx, request)
		if err != nil {
			t.Fatal(err)
		}
		second, err := writer.TransitionPhase(ctx, request)
		if err != nil || second.GetFlow().GetVersion() != first.GetFlow().GetVersion() || first.GetFlow().GetVersion() != 2 {
			t.Fatalf("replay: %v %v", second, err)
		}
		history, err := allHistory(ctx, writer, flowID)
		if err != nil || len(history) != 2 {
			t.Fatalf("history: %d entries, %v", len(history), err)
		}
		reused := proto.Clone(request).(*flowstatev1.TransitionPhaseRequest)
		reused.TargetState = completed
		_, err = writer.TransitionPhase(ctx, reused)
		expectError(t, err, flowstate.ErrRequestIDReused, codes.InvalidArgument)
	})

	t.Run("a response lost in transit is retried with the same id", func(t *testing.T) {
		flowID := newFlow(ctx, t, writer)
		var mu sync.Mutex
		var sent []string
		loseFirst := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if strings.HasSuffix(method, "/TransitionPhase") {
				mu.Lock()
				defer mu.Unlock()
				sent = append(sent, req.(*flowstatev1.TransitionPhaseRequest).GetRequestId())
				if len(sent) == 1 {
					return status.Error(codes.Unavailable, "response lost in transit")
				}
			}
			return err
		}
		flaky := e2eClient(t, srv.token, flowstate.WithDialOptions(grpc.WithUnaryInterceptor(loseFirst)))
		resp, err := move(ctx, flaky, flowID, "data_import", inProgress)
		if err != nil {
			t.Fatal(err)
		}
		if len(sent) != 2 || sent[0] != sent[1] || resp.GetFlow().GetVersion() != 2 || resp.GetHistoryEntries()[0].GetRequestId() != sent[0] {
			t.Fatalf("sent %v, response %v", sent, resp)
		}
		if history, err := allHistory(ctx, writer, flowID); err != nil || len(history) != 2 {
			t.Fatalf("history: %d entries, %v", len(history), err)
		}
	})
}

func TestE2EWatch(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	writer := e2eClient(t, srv.token)

	t.Run("snapshot, every change, ends after the terminal event", func(t *testing.T) {
		flowID := newFlow(ctx, t, writer)
		reader := e2eClient(t, srv.readonlyToken)
		next, stop := iterPull(reader.Watch(ctx, flowID))
		defer stop()
		first, err := next()
		if err != nil || first.GetSnapshot() == nil || first.GetFlowVersion() != 1 {
			t.Fatalf("first event %v %v", first, err)
		}
		done := make(chan []*flowstatev1.FlowEvent, 1)
		go func() {
			var rest []*flowstatev1.FlowEvent
			for {
				event, err := next()
				if err != nil {
					break
				}
				rest = append(rest, event)
			}
			done <- rest
		}()
		runToCompletion(ctx, t, writer, flowID, 0)
		rest := <-done
		if !slices.Equal(versions(rest), span(2, 11)) {
			t.Fatalf("versions %v", versions(rest))
		}
		for i, event := range rest {
			if event.GetProgress() != progressSteps[i] || event.GetChange() == nil {
				t.Fatalf("event %d: %v", i, event)
			}
		}
	})

	t.Run("resume after a version", func(t *testing.T) {
		flowID := newFlow(ctx, t, writer)
		runToCompletion(ctx, t, writer, flowID, 0)
		events, err := collect(writer.Watch(ctx, flowID, flowstate.AfterVersion(7)), 100)
		if err != nil || !slices.Equal(versions(events), []int64{8, 9, 10, 11}) {
			t.Fatalf("versions %v, %v", versions(events), err)
		}
	})

	t.Run("another tenant's flow is not found", func(t *testing.T) {
		flowID := newFlow(ctx, t, writer)
		_, err := collect(e2eClient(t, srv.otherTenantToken).Watch(ctx, flowID), 100)
		expectError(t, err, flowstate.ErrFlowNotFound, codes.NotFound)
	})

	t.Run("WatchFlows", func(t *testing.T) {
		flowID := newFlow(ctx, t, writer)
		watchCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		seen := make(chan []int64, 1)
		first := make(chan struct{})
		go func() {
			var got []int64
			for event, err := range writer.WatchFlows(watchCtx, flowstate.Filter(&flowstatev1.WatchFlowsRequest{FlowIds: []string{flowID}})) {
				if err != nil || event.Cursor == "" || event.Event.GetFlowId() != flowID {
					break
				}
				got = append(got, event.Event.GetFlowVersion())
				if len(got) == 1 {
					close(first)
				}
				if event.Event.GetFlowVersion() == 3 {
					break
				}
			}
			seen <- got
		}()
		select { // the snapshot, before anything changes
		case <-first:
		case <-ctx.Done():
			t.Fatal("no snapshot from WatchFlows")
		}
		mustMove(ctx, t, writer, flowID, "data_import", inProgress)
		mustMove(ctx, t, writer, flowID, "data_import", completed)
		got := <-seen
		if !slices.Equal(got, []int64{1, 2, 3}) || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Fatalf("versions %v", got)
		}
	})

	t.Run("WatchFlows with a filter expression", func(t *testing.T) {
		// matching already matches (its snapshot says the stream is live); a matches from its
		// third version on; b's change never matches.
		matching, a, b := newFlow(ctx, t, writer), newFlow(ctx, t, writer), newFlow(ctx, t, writer)
		mustMove(ctx, t, writer, matching, "data_import", inProgress)
		mustMove(ctx, t, writer, matching, "data_import", completed)
		watchCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		filter := &flowstatev1.WatchFlowsRequest{FlowIds: []string{matching, a, b}, Filter: "phase.data_import = COMPLETED"}
		seen := make(chan []string, 1)
		first := make(chan struct{})
		go func() {
			var got []string
			for event, err := range writer.WatchFlows(watchCtx, flowstate.Filter(filter)) {
				if err != nil {
					break
				}
				got = append(got, fmt.Sprintf("%s@%d", event.Event.GetFlowId(), event.Event.GetFlowVersion()))
				if len(got) == 1 {
					close(first)
				}
				if event.Event.GetFlowId() == a && event.Event.GetFlowVersion() == 4 {
					break
				}
			}
			seen <- got
		}()
		select {
		case <-first:
		case <-ctx.Done():
			t.Fatal("no snapshot from WatchFlows")
		}
		mustMove(ctx, t, writer, b, "data_import", inProgress)
		mustMove(ctx, t, writer, a, "data_import", inProgress)
		mustMove(ctx, t, writer, a, "data_import", completed)
		mustMove(ctx, t, writer, a, "field_mapping", inProgress)
		got := <-seen
		if want := []string{matching + "@3", a + "@3", a + "@4"}; !slices.Equal(got, want) {
			t.Fatalf("events %v, want %v", got, want)
		}
	})

	t.Run("WatchFlows with a filter that does not parse", func(t *testing.T) {
		var final error
		for _, err := range writer.WatchFlows(ctx, flowstate.Filter(&flowstatev1.WatchFlowsRequest{Filter: "status = NOPE"})) {
			final = err
			break
		}
		bad := expectError(t, final, flowstate.ErrMalformedRequest, codes.InvalidArgument)
		if position, ok := bad.Details["position"].(float64); !ok || position != 9 || bad.Details["field"] != "filter" {
			t.Fatalf("details %v, want field filter at position 9", bad.Details)
		}
	})
}

// iterPull adapts a watch for step-by-step reading; next returns an error at the end.
func iterPull(seq iter.Seq2[*flowstatev1.FlowEvent, error]) (func() (*flowstatev1.FlowEvent, error), func()) {
	pull, stop := iter.Pull2(seq)
	next := func() (*flowstatev1.FlowEvent, error) {
		event, err, ok := pull()
		if !ok {
			return nil, errors.New("end of watch")
		}
		return event, err
	}
	return next, stop
}

func TestE2EWatchAcrossRestarts(t *testing.T) {
	srv := server(t)
	for _, variant := range []struct{ name, command, firstReason string }{
		{"graceful", srv.restartCmd, "SERVER_SHUTTING_DOWN/Unavailable"},
		{"hard", srv.hardRestartCmd, "TEMPORARY_RESOURCE_UNAVAILABLE/Unavailable"},
	} {
		t.Run(variant.name, func(t *testing.T) {
			if variant.command == "" {
				t.Skip("the harness gave no restart command")
			}
			ctx := e2eContext(t, 180*time.Second)
			client := e2eClient(t, srv.token)
			flowID := newFlow(ctx, t, client)
			var reconnects []string
			next, stop := iterPull(client.Watch(ctx, flowID, flowstate.OnReconnect(func(err *flowstate.Error, _ int, _ time.Duration) {
				reconnects = append(reconnects, string(err.Code)+"/"+err.GRPCCode.String())
			})))
			defer stop()
			first, err := next()
			if err != nil || first.GetFlowVersion() != 1 {
				t.Fatalf("snapshot %v %v", first, err)
			}
			mustMove(ctx, t, client, flowID, "data_import", inProgress)
			mustMove(ctx, t, client, flowID, "data_import", completed)
			seen := []int64{1}
			for seen[len(seen)-1] < 3 {
				event, err := next()
				if err != nil {
					t.Fatal(err)
				}
				seen = append(seen, event.GetFlowVersion())
			}
			harness(ctx, t, variant.command)
			// Changes made now may commit before the watch has reconnected: they must be replayed.
			runToCompletion(ctx, t, client, flowID, 1)
			for {
				event, err := next()
				if err != nil {
					break
				}
				seen = append(seen, event.GetFlowVersion())
			}
			if !slices.Equal(seen, span(1, 11)) {
				t.Fatalf("versions %v", seen)
			}
			if len(reconnects) == 0 || reconnects[0] != variant.firstReason {
				t.Fatalf("reconnects %v, want the first for %s", reconnects, variant.firstReason)
			}
			t.Logf("reconnected after a %s restart: %s", variant.name, strings.Join(reconnects, ", "))
		})
	}
}

func TestE2EWatchFlowsAcrossAHardRestart(t *testing.T) {
	srv := server(t)
	if srv.hardRestartCmd == "" {
		t.Skip("the harness gave no restart command")
	}
	ctx := e2eContext(t, 180*time.Second)
	client := e2eClient(t, srv.token)
	a, b := newFlow(ctx, t, client), newFlow(ctx, t, client)
	reconnects := 0
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	next, stop := iter.Pull2(client.WatchFlows(streamCtx,
		flowstate.Filter(&flowstatev1.WatchFlowsRequest{FlowIds: []string{a, b}}),
		flowstate.OnReconnect(func(*flowstate.Error, int, time.Duration) { reconnects++ })))
	defer stop()
	seen := map[string][]int64{}
	last := func(id string) int64 {
		if versions := seen[id]; len(versions) > 0 {
			return versions[len(versions)-1]
		}
		return 0
	}
	// read until both flows are at least at the given versions (or the stream fails)
	readUntil := func(va, vb int64) {
		for last(a) < va || last(b) < vb {
			event, err, ok := next()
			if !ok || err != nil {
				t.Fatalf("stream ended at %v: %v", seen, err)
			}
			seen[event.Event.GetFlowId()] = append(seen[event.Event.GetFlowId()], event.Event.GetFlowVersion())
		}
	}
	readUntil(1, 1) // the snapshots
	mustMove(ctx, t, client, a, "data_import", inProgress)
	mustMove(ctx, t, client, b, "data_import", inProgress)
	readUntil(2, 2)
	harness(ctx, t, srv.hardRestartCmd)
	// Changes made now may commit before the stream is back: they must be replayed.
	mustMove(ctx, t, client, b, "data_import", completed)
	mustMove(ctx, t, client, a, "data_import", completed)
	runToCompletion(ctx, t, client, a, 1)
	readUntil(11, 3)
	if !slices.Equal(seen[a], span(1, 11)) || !slices.Equal(seen[b], span(1, 3)) {
		t.Fatalf("versions %v", seen)
	}
	if reconnects == 0 {
		t.Fatal("the stream never reconnected")
	}
}

func harness(ctx context.Context, t *testing.T, command string) {
	t.Helper()
	if output, err := exec.CommandContext(ctx, "/bin/sh", "-c", command).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", command, err, output)
	}
}

func TestE2EMutationRetriedAcrossAnOutage(t *testing.T) {
	srv := server(t)
	if srv.stopCmd == "" || srv.startCmd == "" {
		t.Skip("the harness gave no stop/start commands")
	}
	ctx := e2eContext(t, 180*time.Second)
	client := e2eClient(t, srv.token, flowstate.WithRetryPolicy(flowstate.RetryPolicy{MaxAttempts: -1, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, Deadline: 2 * time.Minute}))
	flowID := newFlow(ctx, t, client)
	harness(ctx, t, srv.stopCmd)
	type result struct {
		resp *flowstatev1.TransitionPhaseResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := move(ctx, client, flowID, "data_import", inProgress)
		done <- result{resp, err}
	}()
	time.Sleep(time.Second) // a few attempts fail meanwhile
	harness(ctx, t, srv.startCmd)
	got := <-done
	if got.err != nil || got.resp.GetFlow().GetVersion() != 2 {
		t.Fatalf("%v %v", got.resp, got.err)
	}
	if history, err := allHistory(ctx, client, flowID); err != nil || len(history) != 2 {
		t.Fatalf("history: %d entries, %v", len(history), err)
	}
}

// allHistory collects Client.History (an iterator) into a slice.
func allHistory(ctx context.Context, client *flowstate.Client, flowID string) ([]*flowstatev1.HistoryEntry, error) {
	var entries []*flowstatev1.HistoryEntry
	for entry, err := range client.History(ctx, flowID, 0) {
		if err != nil {
			return entries, err
		}
		entries = append(entries, entry)
	}
	return entries, nil
}

func TestE2ERecoveryOptions(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	writer := e2eClient(t, srv.token)

	flowID := newFlowStarted(ctx, t, writer)
	mustMove(ctx, t, writer, flowID, "data_import", flowstatev1.PhaseState_PHASE_STATE_COMPLETED)
	mustMove(ctx, t, writer, flowID, "field_mapping", inProgress)
	if _, err := writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{FlowId: flowID, Phase: "field_mapping", TargetState: flowstatev1.PhaseState_PHASE_STATE_FAILED,
		Failure: &flowstatev1.PhaseFailure{ErrorCode: flowstatev1.ErrorCode_ERROR_CODE_DATA_VALIDATION_FAILED, Message: "bad rows"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := writer.GetRecoveryOptions(ctx, &flowstatev1.GetRecoveryOptionsRequest{FlowId: flowID})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetFlow().GetVersion() != 5 {
		t.Fatalf("options computed on version %d, want 5", resp.GetFlow().GetVersion())
	}
	// The core's ranking (tests/core/test_recovery_golden.py); force_retry as an admin would send it.
	type row struct {
		action    flowstatev1.RecoveryAction
		phase     string
		allowed   bool
		blockedBy flowstatev1.ErrorCode
		status    flowstatev1.FlowStatus
	}
	want := []row{
		{flowstatev1.RecoveryAction_RECOVERY_ACTION_FORCE_RETRY, "field_mapping", true, flowstatev1.ErrorCode_ERROR_CODE_UNSPECIFIED, flowstatev1.FlowStatus_FLOW_STATUS_RETRY_PENDING},
		{flowstatev1.RecoveryAction_RECOVERY_ACTION_ROLLBACK, "field_mapping", true, flowstatev1.ErrorCode_ERROR_CODE_UNSPECIFIED, flowstatev1.FlowStatus_FLOW_STATUS_DISCOVERY},
		{flowstatev1.RecoveryAction_RECOVERY_ACTION_ROLLBACK, "data_import", true, flowstatev1.ErrorCode_ERROR_CODE_UNSPECIFIED, flowstatev1.FlowStatus_FLOW_STATUS_DISCOVERY},
		{flowstatev1.RecoveryAction_RECOVERY_ACTION_CANCEL, "", true, flowstatev1.ErrorCode_ERROR_CODE_UNSPECIFIED, flowstatev1.FlowStatus_FLOW_STATUS_CANCELLED},
		{flowstatev1.RecoveryAction_RECOVERY_ACTION_RETRY, "field_mapping", false, flowstatev1.ErrorCode_ERROR_CODE_RETRY_NOT_ALLOWED, flowstatev1.FlowStatus_FLOW_STATUS_UNSPECIFIED},
	}
	var got []row
	for _, o := range resp.GetOptions() {
		got = append(got, row{o.GetAction(), o.GetPhase(), o.GetAllowed(), o.GetBlockedBy(), o.GetTargetStatus()})
	}
	if !slices.Equal(got, want) {
		t.Fatalf("options:\n got %v\nwant %v", got, want)
	}
	rollback := resp.GetOptions()[1].GetRollback()
	if rollback == nil || rollback.GetFlowId() != flowID || rollback.GetPhase() != "field_mapping" {
		t.Fatalf("rollback option's request: %v", resp.GetOptions()[1])
	}
	// An option that is not allowed is sent all the same: the server refuses it with its BlockedBy.
	_, err = writer.ExecuteRecovery(ctx, resp.GetOptions()[4])
	expectError(t, err, flowstate.ErrRetryNotAllowed, codes.FailedPrecondition)
	if _, err := writer.ExecuteRecovery(ctx, &flowstatev1.RecoveryOption{}); err == nil {
		t.Fatal("an option without a request: want an error")
	}
	done, err := writer.ExecuteRecovery(ctx, resp.GetOptions()[1])
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetOptions()[1].GetRollback().GetRequestId() != "" {
		t.Fatal("ExecuteRecovery modified the option")
	}
	phases := done.Flow.GetPhases()
	if phases[0].GetState() != flowstatev1.PhaseState_PHASE_STATE_COMPLETED || phases[1].GetState() != flowstatev1.PhaseState_PHASE_STATE_ROLLED_BACK {
		t.Fatalf("after the rollback option: %v", phases[:2])
	}
	if done.Flow.GetStatus() != want[1].status || len(done.HistoryEntries) != 1 ||
		done.HistoryEntries[0].GetKind() != flowstatev1.HistoryEventKind_HISTORY_EVENT_KIND_ROLLBACK {
		t.Fatalf("status %v, entries %v", done.Flow.GetStatus(), done.HistoryEntries)
	}
	after, err := writer.GetRecoveryOptions(ctx, &flowstatev1.GetRecoveryOptionsRequest{FlowId: flowID})
	if err != nil || after.GetOptions()[0].GetAction() != flowstatev1.RecoveryAction_RECOVERY_ACTION_RESTART {
		t.Fatalf("after: %v %v", after, err)
	}
}

func TestE2EApprovalsAndAlerts(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	writer := e2eClient(t, srv.token)
	approver := e2eClient(t, srv.adminToken)

	// The harness server scans for alerts every 200 ms (scripts/with_test_server.py).
	created, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{
		DefinitionName: "discovery",
		Deadline:       timestamppb.New(time.Now().Add(300 * time.Millisecond)),
	})
	if err != nil || created.GetFlow().GetDeadline() == nil {
		t.Fatalf("create with a deadline: %v %v", created, err)
	}
	flowID := created.GetFlow().GetFlowId()
	mustMove(ctx, t, writer, flowID, "data_import", inProgress)
	mustMove(ctx, t, writer, flowID, "data_import", flowstatev1.PhaseState_PHASE_STATE_WAITING_APPROVAL)
	decide := &flowstatev1.DecidePhaseRequest{FlowId: flowID, Phase: "data_import", Decision: flowstatev1.ApprovalDecision_APPROVAL_DECISION_APPROVE, Comment: "fine"}
	_, err = writer.DecidePhase(ctx, decide)
	expectError(t, err, flowstate.ErrPermissionDenied, codes.PermissionDenied)
	decided, err := approver.DecidePhase(ctx, decide)
	if err != nil {
		t.Fatal(err)
	}
	approval := decided.GetFlow().GetPhases()[0].GetApproval()
	if decided.GetFlow().GetPhases()[0].GetState() != completed || approval.GetApprover() != "admin" || approval.GetComment() != "fine" {
		t.Fatalf("decided: %v", decided.GetFlow().GetPhases()[0])
	}
	if kinds := decided.GetHistoryEntries(); len(kinds) != 1 || kinds[0].GetKind() != flowstatev1.HistoryEventKind_HISTORY_EVENT_KIND_DECISION {
		t.Fatalf("entries: %v", kinds)
	}

	var alert *flowstatev1.FlowAlert
	for event, err := range writer.Watch(ctx, flowID, flowstate.AfterVersion(1), flowstate.KeepOpen()) {
		if err != nil {
			t.Fatal(err)
		}
		if event.GetAlert() != nil {
			alert = event.GetAlert()
			break
		}
	}
	if alert.GetKind() != flowstatev1.AlertKind_ALERT_KIND_DEADLINE_EXCEEDED {
		t.Fatalf("alert: %v", alert)
	}
}
