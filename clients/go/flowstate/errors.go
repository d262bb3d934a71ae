package flowstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every Flowstate error.
const ErrorDomain = "flowstate.v1"

// CorrelationIDHeader is the response trailer carrying the server's correlation id.
const CorrelationIDHeader = "x-correlation-id"

// Code is a Flowstate error code: the google.rpc.ErrorInfo reason, i.e. the
// flowstate.v1.ErrorCode name without its ERROR_CODE_ prefix.
type Code string

// The error codes of flowstate.v1.ErrorCode (see protos/flowstate/v1/errors.proto).
const (
	CodeUnspecified                  Code = "UNSPECIFIED"
	CodeInvalidPhase                 Code = "INVALID_PHASE"
	CodeMalformedRequest             Code = "MALFORMED_REQUEST"
	CodeInvalidPhaseTransition       Code = "INVALID_PHASE_TRANSITION"
	CodeInvalidFlowTransition        Code = "INVALID_FLOW_TRANSITION"
	CodePhaseOrderViolation          Code = "PHASE_ORDER_VIOLATION"
	CodeDependentPhasesActive        Code = "DEPENDENT_PHASES_ACTIVE"
	CodeFlowPaused                   Code = "FLOW_PAUSED"
	CodeFlowTerminal                 Code = "FLOW_TERMINAL"
	CodeMaxRetriesExceeded           Code = "MAX_RETRIES_EXCEEDED"
	CodeRetryNotAllowed              Code = "RETRY_NOT_ALLOWED"
	CodeVersionConflict              Code = "VERSION_CONFLICT"
	CodeFlowNotFound                 Code = "FLOW_NOT_FOUND"
	CodeRequestIDReused              Code = "REQUEST_ID_REUSED"
	CodeUnauthenticated              Code = "UNAUTHENTICATED"
	CodePermissionDenied             Code = "PERMISSION_DENIED"
	CodeTemporaryResourceUnavailable Code = "TEMPORARY_RESOURCE_UNAVAILABLE"
	CodeInternal                     Code = "INTERNAL"
	CodeSubscriberTooSlow            Code = "SUBSCRIBER_TOO_SLOW"
	CodeServerShuttingDown           Code = "SERVER_SHUTTING_DOWN"
	CodeDefinitionNotFound           Code = "DEFINITION_NOT_FOUND"
	CodeDefinitionShadowsBuiltin     Code = "DEFINITION_SHADOWS_BUILTIN"
	CodeWebhookNotFound              Code = "WEBHOOK_NOT_FOUND"
	CodeRateLimited                  Code = "RATE_LIMITED"
	CodeApprovalRequired             Code = "APPROVAL_REQUIRED"
	CodeBulkActionNotFound           Code = "BULK_ACTION_NOT_FOUND"
	CodeChildFlowCancelled           Code = "CHILD_FLOW_CANCELLED"
	CodePhaseFollowsChildFlow        Code = "PHASE_FOLLOWS_CHILD_FLOW"
	CodeChildFlowLimitExceeded       Code = "CHILD_FLOW_LIMIT_EXCEEDED"
	CodeChildFlowNotLinkable         Code = "CHILD_FLOW_NOT_LINKABLE"
)

// CodeOf returns the Code of a flowstatev1.ErrorCode (e.g. in ValidateTransitionResponse.Error).
func CodeOf(code flowstatev1.ErrorCode) Code {
	name, ok := flowstatev1.ErrorCode_name[int32(code)]
	if !ok {
		return CodeUnspecified
	}
	return Code(strings.TrimPrefix(name, "ERROR_CODE_"))
}

// Error is a failed call to Flowstate: the rich status the server sent, decoded.
//
// Match it with errors.Is against the sentinels (errors.Is(err, flowstate.ErrVersionConflict),
// or by gRPC code: errors.Is(err, flowstate.ErrUnavailable)), or get it with errors.As.
type Error struct {
	// Code is the Flowstate error code (the ErrorInfo reason), e.g. CodeInvalidPhaseTransition.
	// A status without one is given the code its gRPC code implies (UNAVAILABLE:
	// TEMPORARY_RESOURCE_UNAVAILABLE, INTERNAL/UNKNOWN/DATA_LOSS: INTERNAL,
	// UNAUTHENTICATED, PERMISSION_DENIED), else CodeUnspecified.
	Code Code
	// GRPCCode is the gRPC status code of the call.
	GRPCCode codes.Code
	// Message is the human-readable explanation.
	Message string
	// Details are the free-form details of the FlowError (valid_transitions,
	// blocking_phases, current_version, ...), JSON-like values (numbers are float64); the
	// ErrorInfo metadata (strings) when the status had no FlowError.
	Details map[string]any
	// FlowError is the decoded flowstate.v1.FlowError, nil when the status had none.
	FlowError *flowstatev1.FlowError
	// ErrorInfo is the decoded google.rpc.ErrorInfo, nil when the status had none.
	ErrorInfo *errdetails.ErrorInfo
	// FieldViolations are the google.rpc.BadRequest violations of a malformed request.
	FieldViolations []*errdetails.BadRequest_FieldViolation
	// RetryAllowed says whether sending the same request again may succeed.
	RetryAllowed bool
	// RetryDelay is the server's suggested wait before a retry (google.rpc.RetryInfo); 0 if none.
	RetryDelay time.Duration
	// CorrelationID is the id under which the server logged the request, if it sent one.
	CorrelationID string
	// Status is the gRPC status the error was decoded from.
	Status *status.Status
	// cause is the error Convert was given.
	cause error
}

// Unwrap returns the error the call failed with: context.DeadlineExceeded or context.Canceled
// for a call that ran out of time or was cancelled (also when gRPC reported it as a status),
// else the error Convert was given. So errors.Is(err, context.DeadlineExceeded) works.
func (e *Error) Unwrap() error {
	if e.cause != nil && (errors.Is(e.cause, context.DeadlineExceeded) || errors.Is(e.cause, context.Canceled)) {
		return e.cause
	}
	switch e.GRPCCode {
	case codes.DeadlineExceeded:
		return context.DeadlineExceeded
	case codes.Canceled:
		return context.Canceled
	}
	return e.cause
}

// Error implements error: "CODE: message (correlation id X)".
func (e *Error) Error() string {
	label := string(e.Code)
	if e.Code == CodeUnspecified || e.Code == "" {
		label = strings.ToUpper(codeName(e.GRPCCode))
	}
	text := fmt.Sprintf("flowstate: %s: %s", label, e.Message)
	if e.CorrelationID != "" {
		text += fmt.Sprintf(" (correlation id %s)", e.CorrelationID)
	}
	return text
}

// GRPCStatus returns the status the error came from, so status.FromError and status.Code
// keep working on it.
func (e *Error) GRPCStatus() *status.Status {
	if e.Status != nil {
		return e.Status
	}
	return status.New(e.GRPCCode, e.Message)
}

// Is matches the sentinels: by Flowstate code (ErrInvalidPhaseTransition, ...) or by gRPC
// code (ErrFailedPrecondition, ErrUnavailable, ...).
func (e *Error) Is(target error) bool {
	s, ok := target.(*sentinel)
	if !ok {
		return false
	}
	if s.byGRPC {
		return e.GRPCCode == s.grpcCode
	}
	return e.Code == s.code
}

// Phase is the phase the error is about, if any.
func (e *Error) Phase() string {
	if e.FlowError.GetPhase() != "" {
		return e.FlowError.GetPhase()
	}
	if value, ok := e.Details["phase"].(string); ok {
		return value
	}
	return ""
}

// ValidTransitions are the legal target states of the phase (INVALID_PHASE_TRANSITION).
func (e *Error) ValidTransitions() []flowstatev1.PhaseState {
	if values := e.FlowError.GetValidTransitions(); len(values) > 0 {
		return values
	}
	var result []flowstatev1.PhaseState
	for _, name := range e.detailStrings("valid_transitions") {
		if value, ok := flowstatev1.PhaseState_value["PHASE_STATE_"+strings.TrimPrefix(strings.ToUpper(name), "PHASE_STATE_")]; ok {
			result = append(result, flowstatev1.PhaseState(value))
		}
	}
	return result
}

// ValidFlowTransitions are the legal target statuses of the flow (INVALID_FLOW_TRANSITION).
func (e *Error) ValidFlowTransitions() []flowstatev1.FlowStatus {
	if values := e.FlowError.GetValidFlowTransitions(); len(values) > 0 {
		return values
	}
	key := "valid_flow_transitions"
	if _, ok := e.Details[key]; !ok {
		key = "valid_transitions"
	}
	var result []flowstatev1.FlowStatus
	for _, name := range e.detailStrings(key) {
		if value, ok := flowstatev1.FlowStatus_value["FLOW_STATUS_"+strings.TrimPrefix(strings.ToUpper(name), "FLOW_STATUS_")]; ok {
			result = append(result, flowstatev1.FlowStatus(value))
		}
	}
	return result
}

// BlockingPhases are the dependencies that are not COMPLETED (PHASE_ORDER_VIOLATION).
func (e *Error) BlockingPhases() []string {
	if values := e.FlowError.GetBlockingPhases(); len(values) > 0 {
		return values
	}
	return e.detailStrings("blocking_phases")
}

// DependentPhases are the downstream phases that block a rollback (DEPENDENT_PHASES_ACTIVE).
func (e *Error) DependentPhases() []string {
	if values := e.FlowError.GetDependentPhases(); len(values) > 0 {
		return values
	}
	return e.detailStrings("dependent_phases")
}

// Recovery lists the recovery actions that remain possible (e.g. "rollback", "cancel").
func (e *Error) Recovery() []string {
	if values := e.FlowError.GetRecovery(); len(values) > 0 {
		return values
	}
	return e.detailStrings("recovery")
}

// CurrentVersion is the flow's current version (VERSION_CONFLICT); ok is false if unknown.
func (e *Error) CurrentVersion() (version int64, ok bool) {
	if v := e.FlowError.GetCurrentVersion(); v != 0 {
		return v, true
	}
	if v, isNumber := e.Details["current_version"].(float64); isNumber {
		return int64(v), true
	}
	return 0, false
}

// AttemptsRemaining is the number of retry attempts left for the phase; ok is false if unknown.
func (e *Error) AttemptsRemaining() (attempts int32, ok bool) {
	if e.FlowError != nil && e.FlowError.AttemptsRemaining != nil {
		return e.FlowError.GetAttemptsRemaining(), true
	}
	if v, isNumber := e.Details["attempts_remaining"].(float64); isNumber {
		return int32(v), true
	}
	return 0, false
}

// MarshalJSON renders the error in the shape the TypeScript and Python clients use:
// {code, grpcCode, message, details, retryAllowed, correlationId, phase}.
func (e *Error) MarshalJSON() ([]byte, error) {
	details := e.Details
	if details == nil {
		details = map[string]any{}
	}
	var correlationID, phase any
	if e.CorrelationID != "" {
		correlationID = e.CorrelationID
	}
	if p := e.Phase(); p != "" {
		phase = p
	}
	return json.Marshal(map[string]any{
		"code":          e.Code,
		"grpcCode":      strings.ToUpper(codeName(e.GRPCCode)),
		"message":       e.Message,
		"details":       details,
		"retryAllowed":  e.RetryAllowed,
		"correlationId": correlationID,
		"phase":         phase,
	})
}

func (e *Error) detailStrings(key string) []string {
	switch value := e.Details[key].(type) {
	case []any:
		result := make([]string, 0, len(value))
		for _, item := range value {
			result = append(result, fmt.Sprint(item))
		}
		return result
	case string: // ErrorInfo metadata joins lists with commas
		if value == "" {
			return nil
		}
		return strings.Split(value, ",")
	}
	return nil
}

// fromServer says whether the server produced the status (it carries Flowstate details).
func (e *Error) fromServer() bool {
	return e.ErrorInfo != nil || e.FlowError != nil
}

// codeName is the canonical upper-snake name of a gRPC code ("FAILED_PRECONDITION").
func codeName(code codes.Code) string {
	if code == codes.Canceled {
		return "CANCELLED"
	}
	var b strings.Builder
	for i, r := range code.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

var impliedCode = map[codes.Code]Code{
	codes.Unauthenticated:  CodeUnauthenticated,
	codes.PermissionDenied: CodePermissionDenied,
	codes.Unavailable:      CodeTemporaryResourceUnavailable,
	codes.Internal:         CodeInternal,
	codes.Unknown:          CodeInternal,
	codes.DataLoss:         CodeInternal,
}

// Convert turns any error of a gRPC call into an *Error (nil stays nil; an *Error is returned
// as is). Context errors become CANCELLED / DEADLINE_EXCEEDED.
func Convert(err error) *Error {
	if err == nil {
		return nil
	}
	var fe *Error
	if errors.As(err, &fe) {
		return fe
	}
	st, isStatus := status.FromError(err)
	if !isStatus {
		st = status.FromContextError(err) // CANCELLED, DEADLINE_EXCEEDED, else UNKNOWN
	}
	result := &Error{GRPCCode: st.Code(), Message: st.Message(), Status: st, cause: err}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			if result.ErrorInfo == nil && (d.GetDomain() == "" || d.GetDomain() == ErrorDomain) {
				result.ErrorInfo = d
			}
		case *flowstatev1.FlowError:
			if result.FlowError == nil {
				result.FlowError = d
			}
		case *errdetails.RetryInfo:
			result.RetryDelay = d.GetRetryDelay().AsDuration()
		case *errdetails.BadRequest:
			result.FieldViolations = append(result.FieldViolations, d.GetFieldViolations()...)
		}
	}
	if reason := result.ErrorInfo.GetReason(); reason != "" {
		code := Code(strings.TrimPrefix(reason, "ERROR_CODE_"))
		if _, known := flowstatev1.ErrorCode_value["ERROR_CODE_"+string(code)]; known {
			result.Code = code
		}
	}
	if (result.Code == "" || result.Code == CodeUnspecified) && result.FlowError != nil {
		result.Code = CodeOf(result.FlowError.GetErrorCode())
	}
	if result.Code == "" || result.Code == CodeUnspecified {
		result.Code = CodeUnspecified
		if implied, ok := impliedCode[result.GRPCCode]; ok {
			result.Code = implied
		}
	}
	switch {
	case result.FlowError != nil:
		result.Details = result.FlowError.GetDetails().AsMap()
		result.RetryAllowed = result.FlowError.GetRetryAllowed()
		if result.FlowError.GetMessage() != "" {
			result.Message = result.FlowError.GetMessage()
		}
		result.CorrelationID = result.FlowError.GetCorrelationId()
	case result.ErrorInfo != nil:
		result.Details = make(map[string]any, len(result.ErrorInfo.GetMetadata()))
		for key, value := range result.ErrorInfo.GetMetadata() {
			result.Details[key] = value
		}
		result.RetryAllowed = result.GRPCCode == codes.Unavailable
	default:
		result.Details = map[string]any{}
		result.RetryAllowed = result.GRPCCode == codes.Unavailable
	}
	if result.CorrelationID == "" {
		result.CorrelationID = result.ErrorInfo.GetMetadata()["correlation_id"]
	}
	return result
}

// sentinel is the type of the Err* values: it matches an *Error by code or by gRPC code.
type sentinel struct {
	code     Code
	grpcCode codes.Code
	byGRPC   bool
}

func (s *sentinel) Error() string {
	if s.byGRPC {
		return "flowstate: " + codeName(s.grpcCode)
	}
	return "flowstate: " + string(s.code)
}

func codeSentinel(code Code) error       { return &sentinel{code: code} }
func grpcSentinel(code codes.Code) error { return &sentinel{grpcCode: code, byGRPC: true} }

// Sentinels by Flowstate code, for errors.Is.
var (
	ErrInvalidPhase                 = codeSentinel(CodeInvalidPhase)
	ErrMalformedRequest             = codeSentinel(CodeMalformedRequest)
	ErrRequestIDReused              = codeSentinel(CodeRequestIDReused)
	ErrInvalidPhaseTransition       = codeSentinel(CodeInvalidPhaseTransition)
	ErrInvalidFlowTransition        = codeSentinel(CodeInvalidFlowTransition)
	ErrPhaseOrderViolation          = codeSentinel(CodePhaseOrderViolation)
	ErrDependentPhasesActive        = codeSentinel(CodeDependentPhasesActive)
	ErrFlowPaused                   = codeSentinel(CodeFlowPaused)
	ErrFlowTerminal                 = codeSentinel(CodeFlowTerminal)
	ErrMaxRetriesExceeded           = codeSentinel(CodeMaxRetriesExceeded)
	ErrRetryNotAllowed              = codeSentinel(CodeRetryNotAllowed)
	ErrVersionConflict              = codeSentinel(CodeVersionConflict)
	ErrFlowNotFound                 = codeSentinel(CodeFlowNotFound)
	ErrTemporaryResourceUnavailable = codeSentinel(CodeTemporaryResourceUnavailable)
	ErrSubscriberTooSlow            = codeSentinel(CodeSubscriberTooSlow)
	ErrServerShuttingDown           = codeSentinel(CodeServerShuttingDown)
	ErrDefinitionNotFound           = codeSentinel(CodeDefinitionNotFound)
	ErrDefinitionShadowsBuiltin     = codeSentinel(CodeDefinitionShadowsBuiltin)
	ErrWebhookNotFound              = codeSentinel(CodeWebhookNotFound)
	ErrRateLimited                  = codeSentinel(CodeRateLimited)
	ErrApprovalRequired             = codeSentinel(CodeApprovalRequired)
	ErrBulkActionNotFound           = codeSentinel(CodeBulkActionNotFound)
	ErrPhaseFollowsChildFlow        = codeSentinel(CodePhaseFollowsChildFlow)
	ErrChildFlowLimitExceeded       = codeSentinel(CodeChildFlowLimitExceeded)
	ErrChildFlowNotLinkable         = codeSentinel(CodeChildFlowNotLinkable)
)

// Sentinels by gRPC code (the classes of the Python and TypeScript clients), for errors.Is.
var (
	ErrInvalidArgument    = grpcSentinel(codes.InvalidArgument)
	ErrFailedPrecondition = grpcSentinel(codes.FailedPrecondition)
	ErrAborted            = grpcSentinel(codes.Aborted)
	ErrNotFound           = grpcSentinel(codes.NotFound)
	ErrUnauthenticated    = grpcSentinel(codes.Unauthenticated)
	ErrPermissionDenied   = grpcSentinel(codes.PermissionDenied)
	ErrResourceExhausted  = grpcSentinel(codes.ResourceExhausted)
	ErrUnavailable        = grpcSentinel(codes.Unavailable)
	ErrDeadlineExceeded   = grpcSentinel(codes.DeadlineExceeded)
	ErrInternal           = grpcSentinel(codes.Internal)
	ErrCanceled           = grpcSentinel(codes.Canceled)
)
