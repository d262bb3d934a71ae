// The lifecycle of a flow, as an orchestrator drives it, with the Go client.
//
// create -> start a phase -> report progress -> complete it; fail a phase -> retry -> complete;
// watch every change meanwhile. Settings come from the environment: FLOWSTATE_ADDRESS (default
// 127.0.0.1:50051) and FLOWSTATE_TOKEN (mint one with `flowstate token`).
//
//	go run .
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

var phases = []string{"data_import", "field_mapping", "data_cleansing", "asset_inventory", "dependency_analysis"}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	client, err := flowstate.NewClient("") // FLOWSTATE_ADDRESS, FLOWSTATE_TOKEN
	if err != nil {
		return err
	}
	defer client.Close()

	created, err := client.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "discovery", DisplayName: "example"})
	if err != nil {
		return err
	}
	flowID := created.GetFlow().GetFlowId()
	fmt.Println("created", flowID, created.GetFlow().GetStatus())

	// Every change, in order; resumes by itself after disconnects; ends after the terminal event.
	watched := make(chan error, 1)
	go func() {
		last := flowstatev1.FlowStatus_FLOW_STATUS_UNSPECIFIED
		for event, err := range client.Watch(ctx, flowID) {
			if err != nil {
				watched <- err
				return
			}
			fmt.Printf("  v%d %s %.0f%%\n", event.GetFlowVersion(), event.GetStatus(), event.GetProgress())
			last = event.GetStatus()
		}
		if last != flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED {
			watched <- fmt.Errorf("the watch ended at %s", last)
			return
		}
		watched <- nil
	}()

	// A refusal is an *Error carrying the server's structured details.
	_, err = client.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{
		FlowId: flowID, Phase: "field_mapping", TargetState: flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS,
	})
	var refusal *flowstate.Error
	if !errors.Is(err, flowstate.ErrPhaseOrderViolation) || !errors.As(err, &refusal) {
		return fmt.Errorf("expected PHASE_ORDER_VIOLATION, got %v", err)
	}
	fmt.Println("refused:", refusal.Code, "blocked by", refusal.BlockingPhases())

	var status flowstatev1.FlowStatus
	for _, phase := range phases {
		if err := move(ctx, client, flowID, phase, flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS); err != nil {
			return err
		}
		if _, err := client.UpdatePhaseProgress(ctx, &flowstatev1.UpdatePhaseProgressRequest{FlowId: flowID, Phase: phase, Progress: 0.5}); err != nil {
			return err
		}
		if phase == "field_mapping" { // the agent failed: report it, then retry the phase
			_, err := client.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{
				FlowId: flowID, Phase: phase, TargetState: flowstatev1.PhaseState_PHASE_STATE_FAILED,
				Failure: &flowstatev1.PhaseFailure{ErrorCode: flowstatev1.ErrorCode_ERROR_CODE_AGENT_TIMEOUT, Message: "the mapping agent did not answer"},
			})
			if err != nil {
				return err
			}
			for range 2 { // FAILED -> RETRY_NEEDED, then RETRY_NEEDED -> IN_PROGRESS
				if _, err := client.Retry(ctx, &flowstatev1.RetryRequest{FlowId: flowID, Phase: phase}); err != nil {
					return err
				}
			}
		}
		result, err := client.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{
			FlowId: flowID, Phase: phase, TargetState: flowstatev1.PhaseState_PHASE_STATE_COMPLETED,
		})
		if err != nil {
			return err
		}
		status = result.GetFlow().GetStatus()
	}
	if status != flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED {
		return fmt.Errorf("the flow ended %s", status)
	}
	if err := <-watched; err != nil {
		return err
	}

	for entry, err := range client.History(ctx, flowID, 0) { // pages are fetched lazily
		if err != nil {
			return err
		}
		fmt.Println(entry.GetFlowVersion(), entry.GetKind(), entry.GetPhase(), entry.GetToState())
	}
	return nil
}

func move(ctx context.Context, client *flowstate.Client, flowID, phase string, state flowstatev1.PhaseState) error {
	_, err := client.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{FlowId: flowID, Phase: phase, TargetState: state})
	return err
}
