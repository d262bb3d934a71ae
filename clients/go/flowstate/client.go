// Package flowstate is the idiomatic Go client of Flowstate: a thin wrapper over the generated
// gRPC stubs (flowstate.dev/client/gen/flowstate/v1) that adds
//
//   - per-RPC bearer credentials (a token or a token source; plaintext only to loopback
//     addresses unless WithInsecure),
//   - a request id (a random UUID) on every mutation that has none, the same on every retry,
//   - retries on UNAVAILABLE with exponential backoff, jitter and a deadline (every unary RPC
//     is idempotent: reads have no side effects, mutations carry a request id),
//   - typed errors (*Error, with errors.Is-friendly sentinels per code),
//   - Watch and WatchFlows: status streams as iter.Seq2 iterators that resume after
//     disconnects from the last version (or cursor) seen, never yielding an event twice.
//
// Example:
//
//	client, err := flowstate.Dial(ctx, "127.0.0.1:50051", flowstate.WithToken(token))
//	if err != nil { ... }
//	defer client.Close()
//	created, err := client.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "discovery"})
//	_, err = client.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{
//		FlowId: created.GetFlow().GetFlowId(), Phase: "data_import",
//		TargetState: flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS,
//	})
//	if errors.Is(err, flowstate.ErrPhaseOrderViolation) { ... }
//	for event, err := range client.Watch(ctx, flowID) { ... }
package flowstate

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

// DefaultAddress is where `flowstate serve` listens by default.
const DefaultAddress = "127.0.0.1:50051"

// Version is this SDK's version, sent with every call as "x-flowstate-client: go/<Version>"
// (the server counts calls by SDK and version).
const Version = "0.1.0"

// ClientHeader is the request metadata key naming the SDK and its version.
const ClientHeader = "x-flowstate-client"

// TokenSource returns the bearer token to send; it is called before every attempt, so a
// refreshing source just returns the fresh token.
type TokenSource func(ctx context.Context) (string, error)

type config struct {
	tokenSource TokenSource
	tlsConfig   *tls.Config
	insecure    bool
	timeout     time.Duration
	retry       RetryPolicy
	watchRetry  RetryPolicy
	dialOptions []grpc.DialOption
	lookupEnv   func(string) (string, bool)
}

// Option configures a Client.
type Option func(*config)

// WithToken sends a fixed bearer token (JWT) with every call.
func WithToken(token string) Option {
	return func(c *config) {
		c.tokenSource = func(context.Context) (string, error) { return token, nil }
	}
}

// WithTokenSource sends the token the source returns, asked before every attempt.
func WithTokenSource(source TokenSource) Option {
	return func(c *config) { c.tokenSource = source }
}

// WithTLS connects over TLS (nil: the system roots). Set Certificates for mTLS.
func WithTLS(cfg *tls.Config) Option {
	return func(c *config) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		c.tlsConfig = cfg
	}
}

// WithInsecure allows plaintext to a host that is not a loopback address (the token then
// travels unencrypted). Plaintext to 127.0.0.0/8, ::1 and localhost is always allowed.
func WithInsecure() Option {
	return func(c *config) { c.insecure = true }
}

// WithTimeout bounds each attempt of a unary call (default 30 s; 0: only the context's
// deadline). The context's own deadline always applies too.
func WithTimeout(timeout time.Duration) Option {
	return func(c *config) { c.timeout = timeout }
}

// WithRetryPolicy sets the retry policy of unary calls (NoRetry() disables retries).
func WithRetryPolicy(policy RetryPolicy) Option {
	return func(c *config) { c.retry = policy }
}

// WithWatchRetryPolicy sets the reconnection policy of Watch and WatchFlows.
func WithWatchRetryPolicy(policy RetryPolicy) Option {
	return func(c *config) { c.watchRetry = policy }
}

// WithoutEnvironment stops NewClient from reading FLOWSTATE_* environment variables for the
// settings the options leave unset (see NewClient).
func WithoutEnvironment() Option {
	return func(c *config) { c.lookupEnv = func(string) (string, bool) { return "", false } }
}

// WithDialOptions adds grpc.DialOptions (keepalive, interceptors, message sizes...).
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, options...) }
}

// Client is a Flowstate client; safe for concurrent use. Close it when done.
type Client struct {
	conn  *grpc.ClientConn
	raw   flowstatev1.FlowStateServiceClient
	cfg   config
	creds credentials.PerRPCCredentials
	// closed is done once Close was called: open watches end instead of reconnecting.
	closed context.Context
	close  context.CancelFunc
}

// NewClient creates a client for address ("host:port", or a gRPC target such as
// "dns:///host:port"). It does not connect until the first call (see Dial).
//
// Settings the arguments leave unset come from the environment, as for the flowstate CLI
// (explicit arguments and options win): an empty address is FLOWSTATE_ADDRESS (else
// DefaultAddress); without WithToken or WithTokenSource, FLOWSTATE_TOKEN; without WithTLS,
// FLOWSTATE_TLS_CA_FILE, FLOWSTATE_TLS_CERT_FILE + FLOWSTATE_TLS_KEY_FILE (mTLS), or
// FLOWSTATE_TLS=1 (the system roots). WithoutEnvironment turns this off.
func NewClient(address string, options ...Option) (*Client, error) {
	cfg := config{timeout: 30 * time.Second, retry: DefaultRetryPolicy(), watchRetry: DefaultWatchRetryPolicy(), lookupEnv: os.LookupEnv}
	for _, option := range options {
		option(&cfg)
	}
	var err error
	if address, err = cfg.fromEnvironment(address); err != nil {
		return nil, err
	}
	loopback := isLoopback(address)
	if cfg.tlsConfig == nil && !loopback && !cfg.insecure {
		return nil, fmt.Errorf("flowstate: refusing plaintext to %s: the bearer token would travel unencrypted; use WithTLS (or WithInsecure on a trusted network)", address)
	}
	transport := insecure.NewCredentials()
	if cfg.tlsConfig != nil {
		transport = credentials.NewTLS(cfg.tlsConfig)
	}
	creds := &bearerCredentials{source: cfg.tokenSource, requireTLS: cfg.tlsConfig != nil || !(loopback || cfg.insecure)}
	// gRPC's own reconnection backoff grows to two minutes while a server is down, and a call
	// made during it fails at once even when the server is back; capped near the retry
	// policies' longest wait, retries and resumed watches reach a restarted server promptly.
	reconnect := backoff.DefaultConfig
	reconnect.BaseDelay = 100 * time.Millisecond
	reconnect.MaxDelay = max(cfg.retry.normalized().MaxBackoff, cfg.watchRetry.normalized().MaxBackoff, time.Second)
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithPerRPCCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnect, MinConnectTimeout: 20 * time.Second}),
	}, cfg.dialOptions...)
	conn, err := grpc.NewClient(address, dial...)
	if err != nil {
		return nil, fmt.Errorf("flowstate: %w", err)
	}
	closed, closeFn := context.WithCancel(context.Background())
	return &Client{conn: conn, raw: flowstatev1.NewFlowStateServiceClient(conn), cfg: cfg, creds: creds, closed: closed, close: closeFn}, nil
}

// fromEnvironment fills the settings the caller left unset from FLOWSTATE_* variables.
func (c *config) fromEnvironment(address string) (string, error) {
	env := func(name string) string {
		value, _ := c.lookupEnv(name)
		return value
	}
	if address == "" {
		address = env("FLOWSTATE_ADDRESS")
	}
	if address == "" {
		address = DefaultAddress
	}
	if c.tokenSource == nil {
		if token := env("FLOWSTATE_TOKEN"); token != "" {
			c.tokenSource = func(context.Context) (string, error) { return token, nil }
		}
	}
	if c.tlsConfig != nil {
		return address, nil
	}
	caFile, certFile, keyFile := env("FLOWSTATE_TLS_CA_FILE"), env("FLOWSTATE_TLS_CERT_FILE"), env("FLOWSTATE_TLS_KEY_FILE")
	switch strings.ToLower(strings.TrimSpace(env("FLOWSTATE_TLS"))) {
	case "1", "true", "yes", "on":
		c.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if caFile == "" && certFile == "" && keyFile == "" {
		return address, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return "", fmt.Errorf("flowstate: FLOWSTATE_TLS_CA_FILE=%s: %w", caFile, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return "", fmt.Errorf("flowstate: FLOWSTATE_TLS_CA_FILE=%s: no PEM certificate in it", caFile)
		}
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return "", fmt.Errorf("flowstate: FLOWSTATE_TLS_CERT_FILE=%s, FLOWSTATE_TLS_KEY_FILE=%s: %w", certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	c.tlsConfig = cfg
	return address, nil
}

// Dial creates a client and waits until it is connected (or ctx is done).
func Dial(ctx context.Context, address string, options ...Option) (*Client, error) {
	client, err := NewClient(address, options...)
	if err != nil {
		return nil, err
	}
	client.conn.Connect()
	for {
		state := client.conn.GetState()
		if state == connectivity.Ready {
			return client, nil
		}
		if !client.conn.WaitForStateChange(ctx, state) {
			_ = client.conn.Close()
			return nil, Convert(fmt.Errorf("flowstate: connecting to %s (last state %s): %w", address, state, ctx.Err()))
		}
	}
}

// Close closes the connection. A locally closed client is final: open Watch and WatchFlows
// iterations end (without an error), promptly, also while waiting to reconnect; unary calls
// fail with CANCELLED.
func (c *Client) Close() error {
	c.close()
	return c.conn.Close()
}

// Raw is the generated client on the same connection (bearer token included; no retries,
// request ids or typed errors).
func (c *Client) Raw() flowstatev1.FlowStateServiceClient { return c.raw }

// Conn is the underlying gRPC connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// bearerCredentials implements credentials.PerRPCCredentials with a TokenSource.
type bearerCredentials struct {
	source     TokenSource
	requireTLS bool
}

func (b *bearerCredentials) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	metadata := map[string]string{ClientHeader: "go/" + Version}
	if b.source == nil {
		return metadata, nil
	}
	token, err := b.source(ctx)
	if err != nil {
		return nil, fmt.Errorf("flowstate: token source: %w", err)
	}
	if token != "" {
		metadata["authorization"] = "Bearer " + token
	}
	return metadata, nil
}

func (b *bearerCredentials) RequireTransportSecurity() bool { return b.requireTLS }

// isLoopback says whether a target names a loopback host.
func isLoopback(target string) bool {
	if i := strings.LastIndex(target, "/"); i >= 0 {
		target = target[i+1:]
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = strings.Trim(target, "[]")
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// NewRequestID returns a random (version 4) UUID, the request id the client gives mutations.
func NewRequestID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("flowstate: crypto/rand failed: %v", err))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// withRequestID returns req, or a copy with a fresh request id when it has none.
func withRequestID[Req interface {
	proto.Message
	GetRequestId() string
}](req Req, set func(Req, string)) Req {
	if req.GetRequestId() != "" {
		return req
	}
	var clone Req
	if req.ProtoReflect().IsValid() {
		clone = proto.Clone(req).(Req)
	} else { // a nil request: an empty one
		clone = req.ProtoReflect().Type().New().Interface().(Req)
	}
	set(clone, NewRequestID())
	return clone
}

// retryCallOption carries a per-call retry policy (CallRetry) to invoke; gRPC ignores it.
type retryCallOption struct {
	grpc.EmptyCallOption
	policy RetryPolicy
}

// CallRetry overrides the client's retry policy for one call (NoRetry() disables retries):
//
//	client.GetFlow(ctx, req, flowstate.CallRetry(flowstate.NoRetry()))
func CallRetry(policy RetryPolicy) grpc.CallOption { return retryCallOption{policy: policy} }

// invoke runs one unary call with the client's retry policy (or the call's CallRetry).
func invoke[Req any, Resp any](ctx context.Context, c *Client, req Req, call func(context.Context, Req, ...grpc.CallOption) (Resp, error), options []grpc.CallOption) (Resp, error) {
	policy := c.cfg.retry
	for _, option := range options {
		if override, ok := option.(retryCallOption); ok {
			policy = override.policy
		}
	}
	state := newRetryState(policy)
	for {
		state.begin()
		attemptCtx, cancel := ctx, context.CancelFunc(func() {})
		if timeout := state.attemptTimeout(c.cfg.timeout); timeout > 0 {
			attemptCtx, cancel = context.WithTimeout(ctx, timeout)
		}
		resp, err := call(attemptCtx, req, options...)
		cancel()
		if err == nil {
			return resp, nil
		}
		failure := Convert(err)
		var zero Resp
		if ctx.Err() != nil {
			return zero, failure
		}
		delay, ok := state.nextDelay(failure, retryableUnary(failure))
		if !ok {
			return zero, failure
		}
		if sleepErr := sleep(ctx, delay); sleepErr != nil {
			return zero, failure
		}
	}
}

// CreateFlow creates a flow (request id added when empty). req may be nil (a "discovery" flow).
// Like every mutation, it does not modify req: the request id goes into a copy.
func (c *Client) CreateFlow(ctx context.Context, req *flowstatev1.CreateFlowRequest, opts ...grpc.CallOption) (*flowstatev1.CreateFlowResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.CreateFlowRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.CreateFlow, opts)
}

// GetFlow returns one flow.
func (c *Client) GetFlow(ctx context.Context, req *flowstatev1.GetFlowRequest, opts ...grpc.CallOption) (*flowstatev1.GetFlowResponse, error) {
	return invoke(ctx, c, req, c.raw.GetFlow, opts)
}

// ListFlows lists the caller's flows (one page).
func (c *Client) ListFlows(ctx context.Context, req *flowstatev1.ListFlowsRequest, opts ...grpc.CallOption) (*flowstatev1.ListFlowsResponse, error) {
	if req == nil {
		req = &flowstatev1.ListFlowsRequest{}
	}
	return invoke(ctx, c, req, c.raw.ListFlows, opts)
}

// ValidateTransition answers whether a transition is legal (a dry run).
func (c *Client) ValidateTransition(ctx context.Context, req *flowstatev1.ValidateTransitionRequest, opts ...grpc.CallOption) (*flowstatev1.ValidateTransitionResponse, error) {
	return invoke(ctx, c, req, c.raw.ValidateTransition, opts)
}

// TransitionPhase moves a phase to a target state (request id added when empty).
func (c *Client) TransitionPhase(ctx context.Context, req *flowstatev1.TransitionPhaseRequest, opts ...grpc.CallOption) (*flowstatev1.TransitionPhaseResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.TransitionPhaseRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.TransitionPhase, opts)
}

// UpdatePhaseProgress reports in-phase progress (request id added when empty).
func (c *Client) UpdatePhaseProgress(ctx context.Context, req *flowstatev1.UpdatePhaseProgressRequest, opts ...grpc.CallOption) (*flowstatev1.UpdatePhaseProgressResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.UpdatePhaseProgressRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.UpdatePhaseProgress, opts)
}

// Heartbeat is a worker's sign of life for a running phase: it pushes the phase's heartbeat
// timeout back (no history, no new version). HeartbeatDeadlineTime is unset when the phase has
// no heartbeat timeout. An *InvalidPhaseTransitionError means the phase is not running (e.g.
// the server timed it out): stop working on it.
func (c *Client) Heartbeat(ctx context.Context, req *flowstatev1.HeartbeatRequest, opts ...grpc.CallOption) (*flowstatev1.HeartbeatResponse, error) {
	return invoke(ctx, c, req, c.raw.Heartbeat, opts)
}

// Rollback rolls a phase back (request id added when empty).
func (c *Client) Rollback(ctx context.Context, req *flowstatev1.RollbackRequest, opts ...grpc.CallOption) (*flowstatev1.RollbackResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.RollbackRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.Rollback, opts)
}

// Retry retries a failed phase (request id added when empty).
func (c *Client) Retry(ctx context.Context, req *flowstatev1.RetryRequest, opts ...grpc.CallOption) (*flowstatev1.RetryResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.RetryRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.Retry, opts)
}

// GetRecoveryOptions lists the recovery actions for the flow's current state.
func (c *Client) GetRecoveryOptions(ctx context.Context, req *flowstatev1.GetRecoveryOptionsRequest, opts ...grpc.CallOption) (*flowstatev1.GetRecoveryOptionsResponse, error) {
	return invoke(ctx, c, req, c.raw.GetRecoveryOptions, opts)
}

// RecoveryResult is what executing a recovery option answers: the flow after the action and
// the history entries it recorded.
type RecoveryResult struct {
	Flow           *flowstatev1.Flow
	HistoryEntries []*flowstatev1.HistoryEntry
}

// ExecuteRecovery sends the request a recovery option carries (an option of GetRecoveryOptions:
// retry, rollback, restart, resume, cancel, pause or skip) through the matching method, with a
// fresh request id; the request is pinned to the flow's version when the options were read
// (ErrVersionConflict if it changed since). The option is not modified. An option that is not
// Allowed is sent all the same (the server refuses it with its BlockedBy); one without a request
// is an error before anything is sent.
func (c *Client) ExecuteRecovery(ctx context.Context, option *flowstatev1.RecoveryOption, opts ...grpc.CallOption) (*RecoveryResult, error) {
	var response interface {
		GetFlow() *flowstatev1.Flow
		GetHistoryEntries() []*flowstatev1.HistoryEntry
	}
	var err error
	switch request := option.GetRequest().(type) {
	case *flowstatev1.RecoveryOption_Retry:
		response, err = c.Retry(ctx, request.Retry, opts...)
	case *flowstatev1.RecoveryOption_Rollback:
		response, err = c.Rollback(ctx, request.Rollback, opts...)
	case *flowstatev1.RecoveryOption_TransitionPhase:
		response, err = c.TransitionPhase(ctx, request.TransitionPhase, opts...)
	case *flowstatev1.RecoveryOption_ResumeFlow:
		response, err = c.ResumeFlow(ctx, request.ResumeFlow, opts...)
	case *flowstatev1.RecoveryOption_CancelFlow:
		response, err = c.CancelFlow(ctx, request.CancelFlow, opts...)
	case *flowstatev1.RecoveryOption_PauseFlow:
		response, err = c.PauseFlow(ctx, request.PauseFlow, opts...)
	case *flowstatev1.RecoveryOption_SkipPhase:
		response, err = c.SkipPhase(ctx, request.SkipPhase, opts...)
	default:
		return nil, fmt.Errorf("flowstate: recovery option %v carries no request", option.GetAction())
	}
	if err != nil {
		return nil, err
	}
	return &RecoveryResult{Flow: response.GetFlow(), HistoryEntries: response.GetHistoryEntries()}, nil
}

// PauseFlow pauses a flow (request id added when empty).
func (c *Client) PauseFlow(ctx context.Context, req *flowstatev1.PauseFlowRequest, opts ...grpc.CallOption) (*flowstatev1.PauseFlowResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.PauseFlowRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.PauseFlow, opts)
}

// ResumeFlow resumes a paused flow (request id added when empty).
func (c *Client) ResumeFlow(ctx context.Context, req *flowstatev1.ResumeFlowRequest, opts ...grpc.CallOption) (*flowstatev1.ResumeFlowResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.ResumeFlowRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.ResumeFlow, opts)
}

// CancelFlow cancels a flow (request id added when empty).
func (c *Client) CancelFlow(ctx context.Context, req *flowstatev1.CancelFlowRequest, opts ...grpc.CallOption) (*flowstatev1.CancelFlowResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.CancelFlowRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.CancelFlow, opts)
}

// ListFlowHistory lists a flow's history entries (one page).
func (c *Client) ListFlowHistory(ctx context.Context, req *flowstatev1.ListFlowHistoryRequest, opts ...grpc.CallOption) (*flowstatev1.ListFlowHistoryResponse, error) {
	return invoke(ctx, c, req, c.raw.ListFlowHistory, opts)
}

// GetFlowDefinition returns a flow definition. req may be nil ("discovery", latest).
func (c *Client) GetFlowDefinition(ctx context.Context, req *flowstatev1.GetFlowDefinitionRequest, opts ...grpc.CallOption) (*flowstatev1.GetFlowDefinitionResponse, error) {
	if req == nil {
		req = &flowstatev1.GetFlowDefinitionRequest{Name: "discovery"}
	}
	return invoke(ctx, c, req, c.raw.GetFlowDefinition, opts)
}

// CreateFlowDefinition registers a definition for the caller's tenant (scope definitions:write;
// request id added when empty). A body identical to the latest version returns that version
// (Created false); another body becomes the next version. Every structural problem comes back at
// once: ErrMalformedRequest, with the paths in Error.FieldViolations.
func (c *Client) CreateFlowDefinition(ctx context.Context, req *flowstatev1.CreateFlowDefinitionRequest, opts ...grpc.CallOption) (*flowstatev1.CreateFlowDefinitionResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.CreateFlowDefinitionRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.CreateFlowDefinition, opts)
}

// ListFlowDefinitions lists the definitions the caller can use (one page): the latest version of
// each name (the tenant's and the built-ins), or every version of req.Name. req may be nil.
func (c *Client) ListFlowDefinitions(ctx context.Context, req *flowstatev1.ListFlowDefinitionsRequest, opts ...grpc.CallOption) (*flowstatev1.ListFlowDefinitionsResponse, error) {
	if req == nil {
		req = &flowstatev1.ListFlowDefinitionsRequest{}
	}
	return invoke(ctx, c, req, c.raw.ListFlowDefinitions, opts)
}

// Definitions yields every definition ListFlowDefinitions lists (every version of name, when
// not empty), fetching pages lazily as the loop asks for more. A final non-nil error ends it.
func (c *Client) Definitions(ctx context.Context, name string, opts ...grpc.CallOption) iter.Seq2[*flowstatev1.FlowDefinition, error] {
	return pages(func(token string) ([]*flowstatev1.FlowDefinition, string, error) {
		page, err := c.ListFlowDefinitions(ctx, &flowstatev1.ListFlowDefinitionsRequest{Name: name, PageToken: token}, opts...)
		return page.GetDefinitions(), page.GetNextPageToken(), err
	})
}

// SkipPhase skips an optional phase: SKIPPED satisfies its dependents and counts as done
// (request id added when empty).
func (c *Client) SkipPhase(ctx context.Context, req *flowstatev1.SkipPhaseRequest, opts ...grpc.CallOption) (*flowstatev1.SkipPhaseResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.SkipPhaseRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.SkipPhase, opts)
}

// CreateWebhook subscribes a URL to the tenant's flow changes (scope webhooks:admin); the
// response carries the signing secret, returned only here (docs/webhooks.md).
func (c *Client) CreateWebhook(ctx context.Context, req *flowstatev1.CreateWebhookRequest, opts ...grpc.CallOption) (*flowstatev1.CreateWebhookResponse, error) {
	return invoke(ctx, c, req, c.raw.CreateWebhook, opts)
}

// ListWebhooks lists the tenant's webhooks with their delivery status (never secrets).
func (c *Client) ListWebhooks(ctx context.Context, req *flowstatev1.ListWebhooksRequest, opts ...grpc.CallOption) (*flowstatev1.ListWebhooksResponse, error) {
	return invoke(ctx, c, req, c.raw.ListWebhooks, opts)
}

// DeleteWebhook deletes a webhook (ErrWebhookNotFound for an unknown id or another tenant's).
func (c *Client) DeleteWebhook(ctx context.Context, req *flowstatev1.DeleteWebhookRequest, opts ...grpc.CallOption) (*flowstatev1.DeleteWebhookResponse, error) {
	return invoke(ctx, c, req, c.raw.DeleteWebhook, opts)
}

// TestWebhook sends one signed webhook.test event now and reports the receiver's answer.
func (c *Client) TestWebhook(ctx context.Context, req *flowstatev1.TestWebhookRequest, opts ...grpc.CallOption) (*flowstatev1.TestWebhookResponse, error) {
	return invoke(ctx, c, req, c.raw.TestWebhook, opts)
}

// ReplayWebhook moves a webhook's cursor (after a cursor, from a time, or to now) and enables it.
func (c *Client) ReplayWebhook(ctx context.Context, req *flowstatev1.ReplayWebhookRequest, opts ...grpc.CallOption) (*flowstatev1.ReplayWebhookResponse, error) {
	return invoke(ctx, c, req, c.raw.ReplayWebhook, opts)
}

// GetRetentionPolicy returns the tenant's retention policy (scope retention:admin, not implied
// by flows:admin; docs/retention.md); Policy.RetainDays 0: the tenant has no policy of its own.
// A nil req is an empty request.
func (c *Client) GetRetentionPolicy(ctx context.Context, req *flowstatev1.GetRetentionPolicyRequest, opts ...grpc.CallOption) (*flowstatev1.GetRetentionPolicyResponse, error) {
	if req == nil {
		req = &flowstatev1.GetRetentionPolicyRequest{}
	}
	return invoke(ctx, c, req, c.raw.GetRetentionPolicy, opts)
}

// SetRetentionPolicy keeps the tenant's COMPLETED and CANCELLED flows req.RetainDays (1..36500)
// after their last change, then archives and deletes them; 0 removes the tenant's own policy.
// Scope retention:admin; idempotent (an out-of-range value is ErrMalformedRequest on
// retain_days).
func (c *Client) SetRetentionPolicy(ctx context.Context, req *flowstatev1.SetRetentionPolicyRequest, opts ...grpc.CallOption) (*flowstatev1.SetRetentionPolicyResponse, error) {
	return invoke(ctx, c, req, c.raw.SetRetentionPolicy, opts)
}

// DecidePhase decides on a phase waiting for approval (request id added when empty): APPROVE
// -> COMPLETED, REQUEST_CHANGES -> IN_PROGRESS, REJECT -> FAILED (APPROVAL_REJECTED). It needs
// the flows:approve scope and whatever scope or claim the phase's approval policy names
// (PermissionDenied otherwise); the approver (the token's subject), decision and comment are
// recorded on the phase and in history.
func (c *Client) DecidePhase(ctx context.Context, req *flowstatev1.DecidePhaseRequest, opts ...grpc.CallOption) (*flowstatev1.DecidePhaseResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.DecidePhaseRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.DecidePhase, opts)
}

// CountFlows counts the caller's flows matching req.Filter (docs/filters.md), in all and per
// req.GroupBy ("status", "definition", "phase.<name>"). A filter that does not parse is
// ErrMalformedRequest with details["position"], the offset of the problem.
func (c *Client) CountFlows(ctx context.Context, req *flowstatev1.CountFlowsRequest, opts ...grpc.CallOption) (*flowstatev1.CountFlowsResponse, error) {
	if req == nil {
		req = &flowstatev1.CountFlowsRequest{}
	}
	return invoke(ctx, c, req, c.raw.CountFlows, opts)
}

// StartBulkAction starts a bulk action over a filter or flow ids (scope flows:admin,
// docs/bulk-actions.md); the server works through it in the background. Request id added when
// empty, so a retried start starts nothing twice.
func (c *Client) StartBulkAction(ctx context.Context, req *flowstatev1.StartBulkActionRequest, opts ...grpc.CallOption) (*flowstatev1.StartBulkActionResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.StartBulkActionRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.StartBulkAction, opts)
}

// GetBulkAction returns one bulk action with its progress (ErrBulkActionNotFound otherwise).
func (c *Client) GetBulkAction(ctx context.Context, req *flowstatev1.GetBulkActionRequest, opts ...grpc.CallOption) (*flowstatev1.GetBulkActionResponse, error) {
	return invoke(ctx, c, req, c.raw.GetBulkAction, opts)
}

// ListBulkActions returns one page of the caller's bulk actions, newest first.
func (c *Client) ListBulkActions(ctx context.Context, req *flowstatev1.ListBulkActionsRequest, opts ...grpc.CallOption) (*flowstatev1.ListBulkActionsResponse, error) {
	if req == nil {
		req = &flowstatev1.ListBulkActionsRequest{}
	}
	return invoke(ctx, c, req, c.raw.ListBulkActions, opts)
}

// CancelBulkAction stops a running bulk action (flows not taken yet are left alone).
func (c *Client) CancelBulkAction(ctx context.Context, req *flowstatev1.CancelBulkActionRequest, opts ...grpc.CallOption) (*flowstatev1.CancelBulkActionResponse, error) {
	return invoke(ctx, c, req, c.raw.CancelBulkAction, opts)
}

// BulkActionResults yields every per-flow result of a bulk action (only outcome, unless
// UNSPECIFIED), fetching pages lazily. A final non-nil error ends it.
func (c *Client) BulkActionResults(ctx context.Context, bulkActionID string, outcome flowstatev1.BulkFlowOutcome, opts ...grpc.CallOption) iter.Seq2[*flowstatev1.BulkFlowResult, error] {
	return pages(func(token string) ([]*flowstatev1.BulkFlowResult, string, error) {
		page, err := invoke(ctx, c, &flowstatev1.ListBulkActionResultsRequest{BulkActionId: bulkActionID, Outcome: outcome, PageToken: token}, c.raw.ListBulkActionResults, opts)
		return page.GetResults(), page.GetNextPageToken(), err
	})
}

// WatchBulkAction yields the bulk action now and at every change of its progress, until it is
// finished. A final non-nil error ends it.
func (c *Client) WatchBulkAction(ctx context.Context, bulkActionID string, opts ...grpc.CallOption) iter.Seq2[*flowstatev1.BulkAction, error] {
	return func(yield func(*flowstatev1.BulkAction, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.raw.WatchBulkAction(ctx, &flowstatev1.WatchBulkActionRequest{BulkActionId: bulkActionID}, opts...)
		if err != nil {
			yield(nil, Convert(err))
			return
		}
		for {
			response, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(nil, Convert(err))
				return
			}
			if !yield(response.GetBulkAction(), nil) {
				return
			}
		}
	}
}

// LinkChildFlow starts a child_flow phase following an existing root flow of the tenant
// instead of a new child (docs/child_flows.md); GetFlow with ChildrenDepth returns the tree.
func (c *Client) LinkChildFlow(ctx context.Context, req *flowstatev1.LinkChildFlowRequest, opts ...grpc.CallOption) (*flowstatev1.LinkChildFlowResponse, error) {
	req = withRequestID(req, func(r *flowstatev1.LinkChildFlowRequest, id string) { r.RequestId = id })
	return invoke(ctx, c, req, c.raw.LinkChildFlow, opts)
}

// FlowTree is a flow with its descendants (GetFlowTree), level by level.
type FlowTree struct {
	// Flow is the flow asked for.
	Flow *flowstatev1.Flow
	// Descendants are its child flows down to the asked depth; each names its parent
	// (ParentFlowId).
	Descendants []*flowstatev1.Flow
	// Truncated says whether the server cut the descendants at its limit (500).
	Truncated bool
}

// Children returns the direct children of flowID among the tree's descendants, oldest first.
func (t *FlowTree) Children(flowID string) []*flowstatev1.Flow {
	var children []*flowstatev1.Flow
	for _, flow := range t.Descendants {
		if flow.GetParentFlowId() == flowID {
			children = append(children, flow)
		}
	}
	return children
}

// GetFlowTree returns a flow with its child flows down to depth levels (1 to
// MaxChildrenDepth; docs/child_flows.md), as the CLI's `flows tree` draws it.
func (c *Client) GetFlowTree(ctx context.Context, flowID string, depth int32, opts ...grpc.CallOption) (*FlowTree, error) {
	response, err := c.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: flowID, ChildrenDepth: depth}, opts...)
	if err != nil {
		return nil, err
	}
	return &FlowTree{Flow: response.GetFlow(), Descendants: response.GetDescendants(), Truncated: response.GetDescendantsTruncated()}, nil
}

// History yields every history entry of a flow after afterVersion, fetching pages lazily as
// the loop asks for more. A final non-nil error ends it.
//
//	for entry, err := range client.History(ctx, flowID, 0) { ... }
func (c *Client) History(ctx context.Context, flowID string, afterVersion int64, opts ...grpc.CallOption) iter.Seq2[*flowstatev1.HistoryEntry, error] {
	return pages(func(token string) ([]*flowstatev1.HistoryEntry, string, error) {
		page, err := c.ListFlowHistory(ctx, &flowstatev1.ListFlowHistoryRequest{FlowId: flowID, AfterVersion: afterVersion, PageToken: token}, opts...)
		return page.GetHistoryEntries(), page.GetNextPageToken(), err
	})
}

// Flows yields every flow matching req's filters (its page token is ignored), fetching pages
// lazily as the loop asks for more. A final non-nil error ends it.
func (c *Client) Flows(ctx context.Context, req *flowstatev1.ListFlowsRequest, opts ...grpc.CallOption) iter.Seq2[*flowstatev1.Flow, error] {
	return pages(func(token string) ([]*flowstatev1.Flow, string, error) {
		page := &flowstatev1.ListFlowsRequest{}
		if req != nil {
			page = proto.Clone(req).(*flowstatev1.ListFlowsRequest)
		}
		page.PageToken = token
		response, err := c.ListFlows(ctx, page, opts...)
		return response.GetFlows(), response.GetNextPageToken(), err
	})
}

// pages turns a page fetcher into a lazy iterator over the items of every page.
func pages[T any](fetch func(token string) (items []T, next string, err error)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		token := ""
		for {
			items, next, err := fetch(token)
			if err != nil {
				var zero T
				yield(zero, err)
				return
			}
			for _, item := range items {
				if !yield(item, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			token = next
		}
	}
}
