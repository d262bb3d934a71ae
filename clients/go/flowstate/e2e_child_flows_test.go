package flowstate_test

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

// TestE2EChildFlows creates and links child flows, reads the tree and lets the parent follow
// its children to completion (docs/child_flows.md).
func TestE2EChildFlows(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	admin := e2eClient(t, srv.adminToken)
	writer := e2eClient(t, srv.token)

	child := &flowstatev1.FlowDefinition{
		Name:   "go_child",
		Phases: []*flowstatev1.PhaseDefinition{{Name: "work", Weight: 100}},
	}
	master := &flowstatev1.FlowDefinition{Name: "go_master"}
	for _, name := range []string{"left", "right"} {
		master.Phases = append(master.Phases, &flowstatev1.PhaseDefinition{
			Name:      name,
			Weight:    50,
			Kind:      flowstatev1.PhaseKind_PHASE_KIND_CHILD_FLOW,
			ChildFlow: &flowstatev1.ChildFlowSpec{DefinitionName: "go_child"},
		})
	}
	for _, definition := range []*flowstatev1.FlowDefinition{child, master} {
		if _, err := admin.CreateFlowDefinition(ctx, &flowstatev1.CreateFlowDefinitionRequest{Definition: definition}); err != nil {
			t.Fatal(err)
		}
	}
	parent, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "go_master"})
	if err != nil {
		t.Fatal(err)
	}
	parentID := parent.GetFlow().GetFlowId()
	started, err := writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{
		FlowId: parentID, Phase: "left", TargetState: flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS,
	})
	if err != nil {
		t.Fatal(err)
	}
	created := started.GetFlow().GetPhases()[0].GetChildFlowId()
	existing, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "go_child"})
	if err != nil {
		t.Fatal(err)
	}
	existingID := existing.GetFlow().GetFlowId()
	linked, err := writer.LinkChildFlow(ctx, &flowstatev1.LinkChildFlowRequest{FlowId: parentID, Phase: "right", ChildFlowId: existingID})
	if err != nil {
		t.Fatal(err)
	}
	if got := linked.GetFlow().GetPhases()[1].GetChildFlowId(); got != existingID {
		t.Fatalf("linked child %q, want %q", got, existingID)
	}
	_, err = writer.LinkChildFlow(ctx, &flowstatev1.LinkChildFlowRequest{FlowId: parentID, Phase: "right", ChildFlowId: existingID})
	expectError(t, err, flowstate.ErrChildFlowNotLinkable, codes.FailedPrecondition)

	tree, err := writer.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: parentID, ChildrenDepth: 1})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, flow := range tree.GetDescendants() {
		ids = append(ids, flow.GetFlowId())
	}
	slices.Sort(ids)
	want := []string{created, existingID}
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Fatalf("descendants %v, want %v", ids, want)
	}
	for _, id := range want {
		for _, state := range []flowstatev1.PhaseState{flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS, flowstatev1.PhaseState_PHASE_STATE_COMPLETED} {
			if _, err := writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{FlowId: id, Phase: "work", TargetState: state}); err != nil {
				t.Fatal(err)
			}
		}
	}
	done, err := writer.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: parentID})
	if err != nil {
		t.Fatal(err)
	}
	if done.GetFlow().GetStatus() != flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED {
		t.Fatalf("parent status %v, want COMPLETED", done.GetFlow().GetStatus())
	}
}
