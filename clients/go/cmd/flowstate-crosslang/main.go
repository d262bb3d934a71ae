// Command flowstate-crosslang is the Go side of the cross-language test (tests/crosslang): it
// creates and drives a flow with the Go client and makes a fixed set of bad requests, printing
// JSON that the test compares with what the TypeScript and Python clients see.
//
//	flowstate-crosslang create           {"flowId": "..."}
//	flowstate-crosslang drive FLOW_ID    one JSON line per step: {"version", "status", "progress"}
//	flowstate-crosslang errors FLOW_ID   {"case": {code, grpcCode, message, details, ...}, ...}
//
// Settings come from the environment: FLOWSTATE_ADDRESS, FLOWSTATE_TOKEN (tenant A, write),
// FLOWSTATE_TOKEN_READONLY (tenant A, read), FLOWSTATE_TOKEN_OTHER_TENANT (tenant B, write).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

var phases = []string{"data_import", "field_mapping", "data_cleansing", "asset_inventory", "dependency_analysis"}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "flowstate-crosslang:", err)
		os.Exit(1)
	}
}

func connect(tokenVariable string) (*flowstate.Client, error) {
	// The settings are read here, explicitly: no FLOWSTATE_TOKEN for the "no token" cases.
	options := []flowstate.Option{flowstate.WithRetryPolicy(flowstate.NoRetry()), flowstate.WithoutEnvironment()}
	if tokenVariable != "" {
		options = append(options, flowstate.WithToken(os.Getenv(tokenVariable)))
	}
	return flowstate.NewClient(os.Getenv("FLOWSTATE_ADDRESS"), options...)
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: flowstate-crosslang create | drive FLOW_ID | errors FLOW_ID")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	writer, err := connect("FLOWSTATE_TOKEN")
	if err != nil {
		return err
	}
	defer writer.Close()
	out := json.NewEncoder(os.Stdout)
	switch {
	case args[0] == "create":
		resp, err := writer.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "discovery", DisplayName: "crosslang"})
		if err != nil {
			return err
		}
		return out.Encode(map[string]any{"flowId": resp.GetFlow().GetFlowId()})
	case args[0] == "drive" && len(args) == 2:
		for _, phase := range phases {
			for _, target := range []flowstatev1.PhaseState{flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS, flowstatev1.PhaseState_PHASE_STATE_COMPLETED} {
				resp, err := writer.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{FlowId: args[1], Phase: phase, TargetState: target, Reason: "crosslang"})
				if err != nil {
					return err
				}
				flow := resp.GetFlow()
				if err := out.Encode(map[string]any{"version": flow.GetVersion(), "status": statusName(flow.GetStatus()), "progress": flow.GetProgress()}); err != nil {
					return err
				}
			}
		}
		return nil
	case args[0] == "errors" && len(args) == 2:
		return out.Encode(badRequests(ctx, writer, args[1]))
	}
	return fmt.Errorf("unknown command %q", strings.Join(args, " "))
}

func statusName(status flowstatev1.FlowStatus) string {
	return strings.TrimPrefix(status.String(), "FLOW_STATUS_")
}

// badRequests makes every bad request of the cross-language test and returns each error.
func badRequests(ctx context.Context, writer *flowstate.Client, flowID string) map[string]any {
	transition := func(c *flowstate.Client, phase string, target flowstatev1.PhaseState, expected *int64) error {
		_, err := c.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{FlowId: flowID, Phase: phase, TargetState: target, ExpectedVersion: expected})
		return err
	}
	with := func(token string, call func(*flowstate.Client) error) error {
		client, err := connect(token)
		if err != nil {
			return err
		}
		defer client.Close()
		return call(client)
	}
	inProgress, completed := flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS, flowstatev1.PhaseState_PHASE_STATE_COMPLETED
	cases := map[string]error{
		"invalid_phase_transition": transition(writer, "data_import", completed, nil),
		"phase_order_violation":    transition(writer, "field_mapping", inProgress, nil),
		"version_conflict":         transition(writer, "data_import", inProgress, proto.Int64(99)),
		"invalid_phase":            transition(writer, "no_such_phase", inProgress, nil),
		"flow_not_found": func() error {
			_, err := writer.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: "00000000-0000-4000-8000-000000000000"})
			return err
		}(),
		"malformed_request": func() error {
			_, err := writer.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: "not-a-uuid"})
			return err
		}(),
		"other_tenant": with("FLOWSTATE_TOKEN_OTHER_TENANT", func(c *flowstate.Client) error {
			_, err := c.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: flowID})
			return err
		}),
		"unauthenticated": with("", func(c *flowstate.Client) error {
			_, err := c.GetFlowDefinition(ctx, &flowstatev1.GetFlowDefinitionRequest{Name: "discovery"})
			return err
		}),
		"permission_denied": with("FLOWSTATE_TOKEN_READONLY", func(c *flowstate.Client) error {
			_, err := c.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "discovery"})
			return err
		}),
	}
	result := map[string]any{}
	for name, err := range cases {
		result[name] = describe(err)
	}
	return result
}

// describe renders an error in the shape the test compares across languages.
func describe(err error) any {
	if err == nil {
		return nil
	}
	var fe *flowstate.Error
	if !errors.As(err, &fe) {
		return map[string]any{"unexpected": err.Error()}
	}
	violations := [][]string{}
	for _, v := range fe.FieldViolations {
		violations = append(violations, []string{v.GetField(), v.GetDescription()})
	}
	states := []string{}
	for _, s := range fe.ValidTransitions() {
		states = append(states, strings.TrimPrefix(s.String(), "PHASE_STATE_"))
	}
	var currentVersion any
	if v, ok := fe.CurrentVersion(); ok {
		currentVersion = v
	}
	// The common fields (code, grpcCode, message, details, retryAllowed, correlationId, phase)
	// as *Error marshals them, plus what the typed accessors decode.
	encoded, err := json.Marshal(fe)
	if err != nil {
		return map[string]any{"unexpected": err.Error()}
	}
	result := map[string]any{}
	if err := json.Unmarshal(encoded, &result); err != nil {
		return map[string]any{"unexpected": err.Error()}
	}
	result["validTransitions"] = states
	result["blockingPhases"] = nonNil(fe.BlockingPhases())
	result["currentVersion"] = currentVersion
	result["fieldViolations"] = violations
	return result
}

func nonNil(values []string) []string {
	if values == nil {
		return []string{}
	}
	return values
}
