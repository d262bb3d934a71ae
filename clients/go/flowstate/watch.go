package flowstate

import (
	"context"
	"errors"
	"io"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

// WatchOption configures Watch and WatchFlows.
type WatchOption func(*watchConfig)

type watchConfig struct {
	afterVersion      *int64
	keepOpen          bool
	includeHeartbeats bool
	retry             *RetryPolicy
	onReconnect       func(err *Error, attempt int, delay time.Duration)
	cursor            string
	filter            *flowstatev1.WatchFlowsRequest
	childrenDepth     *int32
	dependencies      bool
}

// AfterVersion resumes a Watch after this flow version: every later change is replayed, then
// the stream goes live. Without it the stream starts with a snapshot of the flow.
func AfterVersion(version int64) WatchOption {
	return func(c *watchConfig) { c.afterVersion = &version }
}

// KeepOpen keeps a Watch going after the flow reached a terminal status (COMPLETED or
// CANCELLED); without it the iteration ends after the terminal event.
func KeepOpen() WatchOption { return func(c *watchConfig) { c.keepOpen = true } }

// IncludeHeartbeats also yields heartbeat events (never deduplicated).
func IncludeHeartbeats() WatchOption { return func(c *watchConfig) { c.includeHeartbeats = true } }

// WatchRetry overrides the client's reconnection policy for this stream.
func WatchRetry(policy RetryPolicy) WatchOption { return func(c *watchConfig) { c.retry = &policy } }

// OnReconnect is called before each reconnection (for logging, metrics, tests).
func OnReconnect(fn func(err *Error, attempt int, delay time.Duration)) WatchOption {
	return func(c *watchConfig) { c.onReconnect = fn }
}

// AfterCursor resumes a WatchFlows after this cursor (from FlowsEvent.Cursor), or a WatchTree
// after the cursor of one of its responses.
func AfterCursor(cursor string) WatchOption { return func(c *watchConfig) { c.cursor = cursor } }

// Filter sets the filters of a WatchFlows: statuses, definition name, flow ids and the filter
// expression (WatchFlowsRequest.Filter, the ListFlows language of docs/filters.md, evaluated on
// each change as the change left the flow), all ANDed. The cursor field is ignored: see
// AfterCursor. A filter that does not parse ends the iteration with ErrMalformedRequest.
func Filter(filter *flowstatev1.WatchFlowsRequest) WatchOption {
	return func(c *watchConfig) { c.filter = filter }
}

// ChildrenDepth sets how many levels of child flows a WatchTree includes (0 to
// MaxChildrenDepth; default MaxChildrenDepth).
func ChildrenDepth(depth int32) WatchOption {
	return func(c *watchConfig) { c.childrenDepth = &depth }
}

// IncludeDependencies makes a WatchTree also stream the changes of the phases of other flows
// that the tree's external dependencies wait for (relation DEPENDENCY).
func IncludeDependencies() WatchOption { return func(c *watchConfig) { c.dependencies = true } }

// MaxChildrenDepth is the deepest level of child flows GetFlowTree and WatchTree reach (the
// server's limit, docs/child_flows.md).
const MaxChildrenDepth int32 = 5

// FlowsEvent is an event of WatchFlows and the cursor to resume after it.
type FlowsEvent struct {
	Event  *flowstatev1.FlowEvent
	Cursor string
}

// IsTerminal says whether a flow status is terminal (nothing changes the flow any more).
func IsTerminal(status flowstatev1.FlowStatus) bool {
	return status == flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED || status == flowstatev1.FlowStatus_FLOW_STATUS_CANCELLED
}

// IsResumable says whether a status stream that failed with err should be opened again from
// its position: the server or the connection is unavailable (including SERVER_SHUTTING_DOWN),
// the client read too slowly (SUBSCRIBER_TOO_SLOW), or the call was cancelled without any
// status from the server (a connection that went away; the caller's own cancellation is
// checked separately).
func IsResumable(err *Error) bool {
	switch {
	case err.GRPCCode == codes.Unavailable, err.Code == CodeSubscriberTooSlow:
		return true
	case err.fromServer():
		return false
	default:
		return err.GRPCCode == codes.Canceled || err.GRPCCode == codes.Aborted || err.GRPCCode == codes.Internal || err.GRPCCode == codes.Unknown
	}
}

type verdict int

const (
	skip verdict = iota
	deliver
	deliverAndStop
)

// resumable runs one logical stream over as many connections as it takes.
//
// Client.Close ends it: the closing connection's CANCELLED is not a reason to reconnect, and a
// wait before reconnecting is cut short. A locally closed client is final, so the iteration
// just ends (no error: the caller asked for it).
//
// finished (may be nil) says, after a clean end of a stream, that the logical stream is over
// (WatchTree: the server ends it after the watched flow's terminal transaction).
func resumable[T any](ctx context.Context, closed context.Context, policy RetryPolicy, onReconnect func(*Error, int, time.Duration),
	open func(context.Context) (grpc.ServerStreamingClient[T], error), accept func(*T) verdict, finished func() bool,
) iter.Seq2[*T, error] {
	return func(yield func(*T, error) bool) {
		runCtx, stopRun := context.WithCancel(ctx)
		defer stopRun()
		defer context.AfterFunc(closed, stopRun)()
		state := newRetryState(policy)
		for {
			if closed.Err() != nil && ctx.Err() == nil {
				return
			}
			state.begin()
			streamCtx, cancel := context.WithCancel(runCtx)
			received := false
			var failure *Error
			stream, err := open(streamCtx)
			if err != nil {
				failure = Convert(err)
			} else {
				for {
					item, err := stream.Recv()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						failure = Convert(err)
						break
					}
					received = true
					state.reset()
					switch accept(item) {
					case skip:
						continue
					case deliver:
						if !yield(item, nil) {
							cancel()
							return
						}
					case deliverAndStop:
						yield(item, nil)
						cancel()
						return
					}
				}
			}
			cancel()
			if ctx.Err() != nil {
				yield(nil, Convert(ctx.Err()))
				return
			}
			if closed.Err() != nil {
				return
			}
			var delay time.Duration
			var ok bool
			if failure != nil {
				if !IsResumable(failure) {
					yield(nil, failure)
					return
				}
				if delay, ok = state.nextDelay(failure, true); !ok {
					yield(nil, failure)
					return
				}
			} else {
				// A clean end: the server had nothing more to send. One that delivered something
				// before ending early (a server draining without a status) is resumed.
				if !received || (finished != nil && finished()) {
					return
				}
				if delay, ok = state.nextBackoff(0); !ok {
					return
				}
				failure = &Error{Code: CodeUnspecified, GRPCCode: codes.Unavailable, Message: "stream ended early; resuming"}
			}
			if onReconnect != nil {
				onReconnect(failure, state.attempt, delay)
			}
			if err := sleep(runCtx, delay); err != nil {
				if ctx.Err() != nil {
					yield(nil, Convert(ctx.Err()))
				}
				return
			}
		}
	}
}

// position is where a status stream stands, the one place its rules live: the cursor to reopen
// it from, each flow's last version yielded (a replayed one is skipped), and whether the watched
// flow's terminal event came. Watch, WatchFlows and WatchTree differ only in the request they
// send, which flow a version belongs to, and whether a terminal event ends them.
type position struct {
	cursor            string
	versions          map[string]int64
	includeHeartbeats bool
	watched           string // the flow whose terminal event sets terminal (WatchFlows reads neither)
	terminal          bool
}

func newPosition(cfg *watchConfig, watched string) *position {
	return &position{cursor: cfg.cursor, versions: map[string]int64{}, includeHeartbeats: cfg.includeHeartbeats, watched: watched}
}

// accept takes a response's cursor ("" keeps the last one) and its event, a version of flow
// key, and says whether to yield the response.
func (p *position) accept(cursor string, event *flowstatev1.FlowEvent, key string) verdict {
	if cursor != "" {
		p.cursor = cursor
	}
	if event == nil {
		return skip
	}
	if event.GetHeartbeat() != nil {
		if p.includeHeartbeats {
			return deliver
		}
		return skip
	}
	if seen, ok := p.versions[key]; ok && event.GetFlowVersion() <= seen {
		return skip
	}
	p.versions[key] = event.GetFlowVersion()
	if key == p.watched && IsTerminal(event.GetStatus()) {
		p.terminal = true
	}
	return deliver
}

// lastVersion is the last version yielded of flow key (nil: none yet).
func (p *position) lastVersion(key string) *int64 {
	if version, ok := p.versions[key]; ok {
		return &version
	}
	return nil
}

func newWatchConfig(options []WatchOption) *watchConfig {
	cfg := &watchConfig{}
	for _, option := range options {
		option(cfg)
	}
	return cfg
}

func (c *Client) watchPolicy(cfg *watchConfig) RetryPolicy {
	if cfg.retry != nil {
		return *cfg.retry
	}
	return c.cfg.watchRetry
}

// Watch streams the events of one flow: a snapshot first (or, with AfterVersion, every change
// after that version), then every change as it commits, in version order. It reconnects after
// UNAVAILABLE, SERVER_SHUTTING_DOWN and SUBSCRIBER_TOO_SLOW from the last version seen and
// never yields an event twice. Without KeepOpen the iteration ends after the terminal event.
// A final non-nil error (a refusal, the reconnection policy running out, ctx done) ends it.
//
//	for event, err := range client.Watch(ctx, flowID) {
//		if err != nil { return err }
//		fmt.Println(event.GetFlowVersion(), event.GetStatus(), event.GetProgress())
//	}
func (c *Client) Watch(ctx context.Context, flowID string, options ...WatchOption) iter.Seq2[*flowstatev1.FlowEvent, error] {
	cfg := newWatchConfig(options)
	at := newPosition(cfg, flowID)
	if cfg.afterVersion != nil {
		at.versions[flowID] = *cfg.afterVersion
	}
	events := resumable(ctx, c.closed, c.watchPolicy(cfg), cfg.onReconnect,
		func(ctx context.Context) (grpc.ServerStreamingClient[flowstatev1.WatchFlowResponse], error) {
			// A plain stream resumes by version alone: no cursor.
			return c.raw.WatchFlow(ctx, &flowstatev1.WatchFlowRequest{FlowId: flowID, AfterVersion: at.lastVersion(flowID), KeepOpen: cfg.keepOpen})
		},
		func(response *flowstatev1.WatchFlowResponse) verdict {
			// Every version is the watched flow's, however its id was spelt.
			v := at.accept(response.GetCursor(), response.GetEvent(), flowID)
			if v == deliver && at.terminal && !cfg.keepOpen {
				return deliverAndStop
			}
			return v
		}, nil)
	return func(yield func(*flowstatev1.FlowEvent, error) bool) {
		for response, err := range events {
			if !yield(response.GetEvent(), err) {
				return
			}
		}
	}
}

// WatchFlows streams the events of the caller's flows that match Filter, resuming by cursor
// after disconnects and dropping versions already yielded per flow. It never ends by itself.
func (c *Client) WatchFlows(ctx context.Context, options ...WatchOption) iter.Seq2[FlowsEvent, error] {
	cfg := newWatchConfig(options)
	at := newPosition(cfg, "")
	events := resumable(ctx, c.closed, c.watchPolicy(cfg), cfg.onReconnect,
		func(ctx context.Context) (grpc.ServerStreamingClient[flowstatev1.WatchFlowsResponse], error) {
			request := &flowstatev1.WatchFlowsRequest{
				Statuses:       cfg.filter.GetStatuses(),
				DefinitionName: cfg.filter.GetDefinitionName(),
				FlowIds:        cfg.filter.GetFlowIds(),
				Filter:         cfg.filter.GetFilter(),
				Cursor:         at.cursor,
			}
			return c.raw.WatchFlows(ctx, request)
		},
		func(response *flowstatev1.WatchFlowsResponse) verdict {
			return at.accept(response.GetCursor(), response.GetEvent(), response.GetEvent().GetFlowId())
		}, nil)
	return func(yield func(FlowsEvent, error) bool) {
		for response, err := range events {
			if err != nil {
				yield(FlowsEvent{}, err)
				return
			}
			if !yield(FlowsEvent{Event: response.GetEvent(), Cursor: response.GetCursor()}, nil) {
				return
			}
		}
	}
}

// WatchTree streams a flow with its child flows down to ChildrenDepth levels (default
// MaxChildrenDepth; children created or linked while it runs included) and, with
// IncludeDependencies, the changes of the phases its tree's external dependencies wait for
// (docs/child_flows.md, "Watching a tree"). It starts with a snapshot event per flow (or, with
// AfterCursor, every change after that cursor). Each response says which flow its event is
// about (Event.FlowId), how it relates to the watched one (Relation), a descendant's parent
// (ParentFlowId), the phases a dependency's change concerns (Waiting), and the cursor to resume
// after it. It reconnects like Watch, from the last cursor, and never yields a flow's version
// twice. Without KeepOpen it ends after the watched flow's terminal transaction (its children's
// changes in that transaction included).
func (c *Client) WatchTree(ctx context.Context, flowID string, options ...WatchOption) iter.Seq2[*flowstatev1.WatchFlowResponse, error] {
	cfg := newWatchConfig(options)
	depth := MaxChildrenDepth
	if cfg.childrenDepth != nil {
		depth = *cfg.childrenDepth
	}
	at := newPosition(cfg, flowID)
	return resumable(ctx, c.closed, c.watchPolicy(cfg), cfg.onReconnect,
		func(ctx context.Context) (grpc.ServerStreamingClient[flowstatev1.WatchFlowResponse], error) {
			return c.raw.WatchFlow(ctx, &flowstatev1.WatchFlowRequest{
				FlowId: flowID, KeepOpen: cfg.keepOpen, ChildrenDepth: depth,
				IncludeDependencies: cfg.dependencies, Cursor: at.cursor,
			})
		},
		func(response *flowstatev1.WatchFlowResponse) verdict {
			return at.accept(response.GetCursor(), response.GetEvent(), response.GetEvent().GetFlowId())
		},
		// The server ends the stream after the watched flow's terminal transaction.
		func() bool { return at.terminal && !cfg.keepOpen })
}
