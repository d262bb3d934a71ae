package flowstate_test

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

// goDiamond is a -> b, a -> c (optional), b + c -> d.
func goDiamond() *flowstatev1.FlowDefinition {
	return &flowstatev1.FlowDefinition{
		Name: "go_diamond",
		Phases: []*flowstatev1.PhaseDefinition{
			{Name: "a", Weight: 25, StatusGroup: flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING},
			{Name: "b", DependsOn: []string{"a"}, Weight: 25, StatusGroup: flowstatev1.FlowStatus_FLOW_STATUS_DISCOVERY},
			{Name: "c", DependsOn: []string{"a"}, Weight: 25, Optional: true},
			{Name: "d", DependsOn: []string{"b", "c"}, Weight: 25, StatusGroup: flowstatev1.FlowStatus_FLOW_STATUS_PLANNING},
		},
	}
}

// TestE2EDiamondWithParallelBranchesAndASkip registers a definition, runs b and c in parallel,
// skips the optional c, and reads progress and status along the way.
func TestE2EDiamondWithParallelBranchesAndASkip(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	admin := e2eClient(t, srv.adminToken) // flows:admin implies definitions:write
	writer := e2eClient(t, srv.token)

	first, err := admin.CreateFlowDefinition(ctx, &flowstatev1.CreateFlowDefinitionRequest{Definition: goDiamond()})
	if err != nil {
		t.Fatal(err)
	}
	again, err := admin.CreateFlowDefinition(ctx, &flowstatev1.CreateFlowDefinitionRequest{Definition: goDiamond()})
	if err != nil {
		t.Fatal(err)
	}
	if again.GetCreated() || again.GetDefinition().GetVersion() != first.GetDefinition().GetVersion() {
		t.Fatalf("re-registering the same body: created=%v version %d, want the existing version %d", again.GetCreated(), again.GetDefinition().GetVersion(), first.GetDefinition().GetVersion())
	}
	names := []string{}
	for d, err := range writer.Definitions(ctx, "") {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, d.GetName())
	}
	if !slices.Contains(names, "go_diamond") || !slices.Contains(names, "discovery") {
		t.Fatalf("listed %v", names)
	}

	created, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "go_diamond"})
	if err != nil {
		t.Fatal(err)
	}
	flowID := created.GetFlow().GetFlowId()
	mustMove(ctx, t, writer, flowID, "a", inProgress)
	flow := mustMove(ctx, t, writer, flowID, "a", flowstatev1.PhaseState_PHASE_STATE_COMPLETED)
	if flow.GetStatus() != flowstatev1.FlowStatus_FLOW_STATUS_DATA_GATHERING || flow.GetProgress() != 25 {
		t.Fatalf("after a: %v %v", flow.GetStatus(), flow.GetProgress())
	}
	mustMove(ctx, t, writer, flowID, "b", inProgress)
	flow = mustMove(ctx, t, writer, flowID, "c", inProgress)
	if flow.GetPhases()[1].GetState() != inProgress || flow.GetPhases()[2].GetState() != inProgress {
		t.Fatalf("b and c should run in parallel: %v", flow.GetPhases())
	}
	if flow.GetStatus() != flowstatev1.FlowStatus_FLOW_STATUS_ACTIVE || flow.GetProgress() != 40 {
		t.Fatalf("b and c running: %v %v", flow.GetStatus(), flow.GetProgress())
	}
	_, err = move(ctx, writer, flowID, "d", inProgress)
	blocked := expectError(t, err, flowstate.ErrPhaseOrderViolation, codes.FailedPrecondition)
	if got := blocked.FlowError.GetBlockingPhases(); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("blocking phases %v", got)
	}
	_, err = writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{
		FlowId: flowID, Phase: "c", TargetState: flowstatev1.PhaseState_PHASE_STATE_FAILED,
		Failure: &flowstatev1.PhaseFailure{ErrorCode: flowstatev1.ErrorCode_ERROR_CODE_AGENT_TIMEOUT, Message: "slow"},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = writer.SkipPhase(ctx, &flowstatev1.SkipPhaseRequest{FlowId: flowID, Phase: "b"})
	expectError(t, err, flowstate.ErrInvalidPhaseTransition, codes.FailedPrecondition)
	// The failed optional phase's recovery options offer the skip, executed as offered.
	options, err := writer.GetRecoveryOptions(ctx, &flowstatev1.GetRecoveryOptionsRequest{FlowId: flowID})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(options.GetOptions(), func(o *flowstatev1.RecoveryOption) bool {
		return o.GetAction() == flowstatev1.RecoveryAction_RECOVERY_ACTION_SKIP && o.GetPhase() == "c"
	})
	if i < 0 {
		t.Fatalf("no skip of c among %v", options.GetOptions())
	}
	skipped, err := writer.ExecuteRecovery(ctx, options.GetOptions()[i])
	if err != nil {
		t.Fatal(err)
	}
	if skipped.Flow.GetPhases()[2].GetState() != flowstatev1.PhaseState_PHASE_STATE_SKIPPED || skipped.Flow.GetProgress() != 57.5 {
		t.Fatalf("after the skip: %v %v", skipped.Flow.GetPhases()[2].GetState(), skipped.Flow.GetProgress())
	}
	if kinds := skipped.HistoryEntries; len(kinds) != 1 || kinds[0].GetKind() != flowstatev1.HistoryEventKind_HISTORY_EVENT_KIND_SKIP {
		t.Fatalf("history of the skip: %v", kinds)
	}
	mustMove(ctx, t, writer, flowID, "b", flowstatev1.PhaseState_PHASE_STATE_COMPLETED)
	mustMove(ctx, t, writer, flowID, "d", inProgress)
	flow = mustMove(ctx, t, writer, flowID, "d", flowstatev1.PhaseState_PHASE_STATE_COMPLETED)
	if flow.GetStatus() != flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED || flow.GetProgress() != 100 {
		t.Fatalf("done: %v %v", flow.GetStatus(), flow.GetProgress())
	}
}

// TestE2EDefinitionRefusals: every problem at once, tenant isolation, explicit shadowing.
func TestE2EDefinitionRefusals(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	admin := e2eClient(t, srv.adminToken)
	broken := goDiamond()
	broken.Phases = broken.Phases[:3]
	_, err := admin.CreateFlowDefinition(ctx, &flowstatev1.CreateFlowDefinitionRequest{Definition: broken})
	malformed := expectError(t, err, flowstate.ErrMalformedRequest, codes.InvalidArgument)
	if len(malformed.FieldViolations) == 0 || malformed.FieldViolations[0].GetField() != "phases" {
		t.Fatalf("violations %v", malformed.FieldViolations)
	}
	shadow := goDiamond()
	shadow.Name = "discovery"
	_, err = admin.CreateFlowDefinition(ctx, &flowstatev1.CreateFlowDefinitionRequest{Definition: shadow})
	expectError(t, err, flowstate.ErrDefinitionShadowsBuiltin, codes.FailedPrecondition)
	if _, err = admin.CreateFlowDefinition(ctx, &flowstatev1.CreateFlowDefinitionRequest{Definition: goDiamond()}); err != nil {
		t.Fatal(err)
	}
	_, err = e2eClient(t, srv.otherTenantToken).GetFlowDefinition(ctx, &flowstatev1.GetFlowDefinitionRequest{Name: "go_diamond"})
	expectError(t, err, flowstate.ErrDefinitionNotFound, codes.NotFound)
	_, err = e2eClient(t, srv.token).CreateFlowDefinition(ctx, &flowstatev1.CreateFlowDefinitionRequest{Definition: goDiamond()})
	expectError(t, err, flowstate.ErrPermissionDenied, codes.PermissionDenied)
}

// TestUnknownEnumValuesSurvive: a phase state this build does not know (a newer server's) is
// kept as its number through decoding, and String() names it by number instead of failing.
func TestUnknownEnumValuesSurvive(t *testing.T) {
	encoded, err := proto.Marshal(&flowstatev1.Phase{Name: "x", State: flowstatev1.PhaseState(42)})
	if err != nil {
		t.Fatal(err)
	}
	var decoded flowstatev1.Phase
	if err := proto.Unmarshal(encoded, &decoded); err != nil {
		t.Fatal(err)
	}
	if decoded.GetState() != 42 || decoded.GetState().String() != "42" {
		t.Fatalf("state %d (%s), want 42", decoded.GetState(), decoded.GetState().String())
	}
}

// TestE2EHeartbeatsAndAutomaticRetries registers a phase with a heartbeat timeout and a retry
// policy: a heartbeat pushes the deadline back, and a listed failure is moved to RETRY_NEEDED
// by the server (as system:timer) once its backoff has passed, with next_attempt_time stamped.
func TestE2EHeartbeatsAndAutomaticRetries(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	admin := e2eClient(t, srv.adminToken)
	writer := e2eClient(t, srv.token)
	timed := &flowstatev1.FlowDefinition{
		Name: "go_timed",
		Phases: []*flowstatev1.PhaseDefinition{{
			Name: "work", Weight: 100, MaxRetries: 1,
			Policy: &flowstatev1.PhasePolicy{
				HeartbeatTimeout: durationpb.New(30 * time.Second),
				RetryPolicy: &flowstatev1.PhaseRetryPolicy{
					InitialBackoff: durationpb.New(200 * time.Millisecond),
					Multiplier:     2,
					MaxBackoff:     durationpb.New(time.Second),
					RetryOn:        []flowstatev1.ErrorCode{flowstatev1.ErrorCode_ERROR_CODE_EXTERNAL_SERVICE_ERROR},
				},
			},
		}},
	}
	if _, err := admin.CreateFlowDefinition(ctx, &flowstatev1.CreateFlowDefinitionRequest{Definition: timed}); err != nil {
		t.Fatal(err)
	}
	created, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "go_timed"})
	if err != nil {
		t.Fatal(err)
	}
	flowID := created.GetFlow().GetFlowId()
	_, err = writer.Heartbeat(ctx, &flowstatev1.HeartbeatRequest{FlowId: flowID, Phase: "work"})
	expectError(t, err, flowstate.ErrInvalidPhaseTransition, codes.FailedPrecondition)
	started := mustMove(ctx, t, writer, flowID, "work", inProgress)
	beat, err := writer.Heartbeat(ctx, &flowstatev1.HeartbeatRequest{FlowId: flowID, Phase: "work"})
	if err != nil {
		t.Fatal(err)
	}
	if beat.GetFlowVersion() != started.GetVersion() || beat.GetHeartbeatDeadlineTime() == nil {
		t.Fatalf("heartbeat: version %d (flow at %d), deadline %v", beat.GetFlowVersion(), started.GetVersion(), beat.GetHeartbeatDeadlineTime())
	}
	failed, err := writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{
		FlowId: flowID, Phase: "work", TargetState: flowstatev1.PhaseState_PHASE_STATE_FAILED,
		Failure: &flowstatev1.PhaseFailure{ErrorCode: flowstatev1.ErrorCode_ERROR_CODE_EXTERNAL_SERVICE_ERROR, Message: "down"},
	})
	if err != nil {
		t.Fatal(err)
	}
	due := failed.GetFlow().GetPhases()[0].GetNextAttemptTime()
	entries := failed.GetHistoryEntries()
	if due == nil || !proto.Equal(entries[len(entries)-1].GetNextAttemptTime(), due) {
		t.Fatalf("next attempt: phase %v, entry %v", due, entries[len(entries)-1].GetNextAttemptTime())
	}
	state := flowstatev1.PhaseState_PHASE_STATE_FAILED
	for i := 0; i < 300 && state != flowstatev1.PhaseState_PHASE_STATE_RETRY_NEEDED; i++ { // bounded polling
		time.Sleep(50 * time.Millisecond)
		got, err := writer.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: flowID})
		if err != nil {
			t.Fatal(err)
		}
		state = got.GetFlow().GetPhases()[0].GetState()
	}
	if state != flowstatev1.PhaseState_PHASE_STATE_RETRY_NEEDED {
		t.Fatalf("the server did not retry the phase: %v", state)
	}
}
