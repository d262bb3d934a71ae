package flowstate_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

// TestE2EFiltersCountsAndABulkRetry counts flows with a filter, retries the failed ones in bulk,
// follows the progress to the end and reads which flow was refused and why.
func TestE2EFiltersCountsAndABulkRetry(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	writer := e2eClient(t, srv.token)
	admin := e2eClient(t, srv.adminToken)
	run := fmt.Sprintf("go-%d", time.Now().UnixNano())
	labels := map[string]string{"run": run}

	var failed []string
	for _, code := range []flowstatev1.ErrorCode{
		flowstatev1.ErrorCode_ERROR_CODE_EXTERNAL_SERVICE_ERROR,
		flowstatev1.ErrorCode_ERROR_CODE_DATA_VALIDATION_FAILED,
	} {
		created, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "discovery", Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		flowID := created.GetFlow().GetFlowId()
		mustMove(ctx, t, writer, flowID, "data_import", inProgress)
		if _, err := writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{
			FlowId: flowID, Phase: "data_import", TargetState: flowstatev1.PhaseState_PHASE_STATE_FAILED,
			Failure: &flowstatev1.PhaseFailure{ErrorCode: code, Message: "down"},
		}); err != nil {
			t.Fatal(err)
		}
		failed = append(failed, flowID)
	}
	if _, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "discovery", Labels: labels}); err != nil {
		t.Fatal(err)
	}

	filter := fmt.Sprintf("labels.run = %q", run)
	counted, err := writer.CountFlows(ctx, &flowstatev1.CountFlowsRequest{Filter: filter, GroupBy: "status"})
	if err != nil {
		t.Fatal(err)
	}
	if counted.GetTotalCount() != 3 || len(counted.GetGroups()) != 2 || counted.GetGroups()[0].GetKey() != "FAILED" || counted.GetGroups()[0].GetCount() != 2 {
		t.Fatalf("counts: %v", counted)
	}
	_, err = writer.CountFlows(ctx, &flowstatev1.CountFlowsRequest{Filter: "status ="})
	bad := expectError(t, err, flowstate.ErrMalformedRequest, codes.InvalidArgument)
	if position, _ := bad.Details["position"].(float64); position != 8 {
		t.Fatalf("position: %v", bad.Details)
	}

	started, err := admin.StartBulkAction(ctx, &flowstatev1.StartBulkActionRequest{
		Action: flowstatev1.BulkActionType_BULK_ACTION_TYPE_RETRY, Filter: filter + " AND status = FAILED", Reason: "go e2e",
	})
	if err != nil {
		t.Fatal(err)
	}
	action := started.GetBulkAction()
	if action.GetTotalCount() != 2 {
		t.Fatalf("total: %v", action)
	}
	last := action
	for update, err := range admin.WatchBulkAction(ctx, action.GetBulkActionId()) {
		if err != nil {
			t.Fatal(err)
		}
		last = update
	}
	if last.GetState() != flowstatev1.BulkActionState_BULK_ACTION_STATE_SUCCEEDED || last.GetAppliedCount() != 1 || last.GetRefusedCount() != 1 {
		t.Fatalf("final: %v", last)
	}
	var refused []string
	for result, err := range admin.BulkActionResults(ctx, action.GetBulkActionId(), flowstatev1.BulkFlowOutcome_BULK_FLOW_OUTCOME_REFUSED) {
		if err != nil {
			t.Fatal(err)
		}
		if result.GetError().GetErrorCode() != flowstatev1.ErrorCode_ERROR_CODE_RETRY_NOT_ALLOWED {
			t.Fatalf("refusal: %v", result)
		}
		refused = append(refused, result.GetFlowId())
	}
	if !slices.Equal(refused, failed[1:]) {
		t.Fatalf("refused %v, want %v", refused, failed[1:])
	}
	_, err = admin.GetBulkAction(ctx, &flowstatev1.GetBulkActionRequest{BulkActionId: "00000000-0000-4000-8000-000000000000"})
	expectError(t, err, flowstate.ErrBulkActionNotFound, codes.NotFound)
}
