package flowstate_test

import (
	"iter"
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

// TestE2EWatchTree watches a master flow with its children and its external dependency:
// snapshot events per flow, a child created later, a resume by cursor that repeats and loses
// nothing, and the end after the master's terminal transaction (docs/child_flows.md).
func TestE2EWatchTree(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	admin := e2eClient(t, srv.adminToken)
	writer := e2eClient(t, srv.token)
	child := &flowstatev1.FlowDefinition{
		Name:   "go_tree_child",
		Phases: []*flowstatev1.PhaseDefinition{{Name: "work", Weight: 100}},
	}
	master := &flowstatev1.FlowDefinition{Name: "go_tree_master", Phases: []*flowstatev1.PhaseDefinition{{
		Name: "sub", Weight: 100, Kind: flowstatev1.PhaseKind_PHASE_KIND_CHILD_FLOW,
		ChildFlow: &flowstatev1.ChildFlowSpec{DefinitionName: "go_tree_child"},
	}}}
	for _, definition := range []*flowstatev1.FlowDefinition{child, master} {
		if _, err := admin.CreateFlowDefinition(ctx, &flowstatev1.CreateFlowDefinitionRequest{Definition: definition}); err != nil {
			t.Fatal(err)
		}
	}
	move := func(flowID, phase string, state flowstatev1.PhaseState) *flowstatev1.Flow {
		t.Helper()
		response, err := writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{FlowId: flowID, Phase: phase, TargetState: state})
		if err != nil {
			t.Fatal(err)
		}
		return response.GetFlow()
	}
	upstream, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "go_tree_child"})
	if err != nil {
		t.Fatal(err)
	}
	upstreamID := upstream.GetFlow().GetFlowId()
	parent, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{
		DefinitionName: "go_tree_master",
		ExternalDependencies: []*flowstatev1.ExternalDependency{
			{Phase: "sub", FlowId: upstreamID, FlowPhase: "work"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	parentID := parent.GetFlow().GetFlowId()

	next, stop := iter.Pull2(writer.WatchTree(ctx, parentID, flowstate.IncludeDependencies()))
	receive := func(next func() (*flowstatev1.WatchFlowResponse, error, bool)) *flowstatev1.WatchFlowResponse {
		t.Helper()
		response, err, ok := next()
		if err != nil || !ok {
			t.Fatalf("stream ended: %v", err)
		}
		return response
	}
	own, dependency := receive(next), receive(next)
	if own.GetEvent().GetFlowId() != parentID || own.GetRelation() != flowstatev1.WatchRelation_WATCH_RELATION_SELF || own.GetEvent().GetSnapshot() == nil {
		t.Fatalf("first event %v", own)
	}
	if dependency.GetRelation() != flowstatev1.WatchRelation_WATCH_RELATION_DEPENDENCY || dependency.GetEvent().GetFlowId() != upstreamID ||
		len(dependency.GetWaiting()) != 1 || dependency.GetWaiting()[0].GetPhase() != "sub" || dependency.GetCursor() == "" {
		t.Fatalf("dependency snapshot %v", dependency)
	}
	move(upstreamID, "work", flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS)
	move(upstreamID, "work", flowstatev1.PhaseState_PHASE_STATE_COMPLETED)
	for _, want := range []flowstatev1.PhaseState{flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS, flowstatev1.PhaseState_PHASE_STATE_COMPLETED} {
		woken := receive(next)
		if woken.GetRelation() != flowstatev1.WatchRelation_WATCH_RELATION_DEPENDENCY || woken.GetEvent().GetChange().GetToState() != want {
			t.Fatalf("dependency change %v, want %v", woken, want)
		}
	}
	childID := move(parentID, "sub", flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS).GetPhases()[0].GetChildFlowId()
	seen := map[string]int64{}
	var cursor string
	for len(seen) < 2 { // the child's creation and the parent's start, one transaction
		response := receive(next)
		seen[response.GetEvent().GetFlowId()] = response.GetEvent().GetFlowVersion()
		cursor = response.GetCursor()
		if response.GetEvent().GetFlowId() == childID &&
			(response.GetRelation() != flowstatev1.WatchRelation_WATCH_RELATION_DESCENDANT || response.GetParentFlowId() != parentID) {
			t.Fatalf("child event %v", response)
		}
	}
	stop()

	move(childID, "work", flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS) // nobody watches
	move(childID, "work", flowstatev1.PhaseState_PHASE_STATE_COMPLETED)   // completes the parent
	tree, err := writer.GetFlowTree(ctx, parentID, 1)
	if err != nil {
		t.Fatal(err)
	}
	if children := tree.Children(parentID); len(children) != 1 || children[0].GetFlowId() != childID || tree.Truncated {
		t.Fatalf("tree %v", tree)
	}
	want := map[string]int64{parentID: tree.Flow.GetVersion(), childID: tree.Descendants[0].GetVersion()}
	last := map[string]int64{}
	for response, err := range writer.WatchTree(ctx, parentID, flowstate.IncludeDependencies(), flowstate.AfterCursor(cursor)) {
		if err != nil {
			t.Fatal(err)
		}
		event := response.GetEvent()
		if event.GetSnapshot() != nil || event.GetFlowVersion() <= max(last[event.GetFlowId()], seen[event.GetFlowId()]) {
			t.Fatalf("snapshot or repeated event after a resume: %v", response)
		}
		last[event.GetFlowId()] = event.GetFlowVersion()
	} // ends by itself: the parent completed
	if last[parentID] != want[parentID] || last[childID] != want[childID] {
		t.Fatalf("resumed up to %v, want %v", last, want)
	}
}
