package flowstate

import (
	"context"
	"math"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
)

// RetryPolicy is exponential backoff with jitter and an overall deadline.
//
// Unary calls are retried on UNAVAILABLE (the server, the network or the database is
// unreachable, or the server is shutting down) and on RATE_LIMITED (RESOURCE_EXHAUSTED: the
// tenant's request budget), each time waiting at least the server's RetryInfo delay. That is safe for mutations because the client
// sends the same request_id on every attempt, and the server answers a repeated id with the
// first response instead of applying the change twice.
//
// Zero fields take the defaults of DefaultRetryPolicy (so RetryPolicy{} is usable); use -1 for
// "no limit" in MaxAttempts and Deadline.
type RetryPolicy struct {
	// MaxAttempts is the number of attempts in all, the first included (1: no retries;
	// -1: bounded by Deadline only).
	MaxAttempts int
	// InitialBackoff is the wait before the second attempt.
	InitialBackoff time.Duration
	// MaxBackoff is the longest wait between two attempts.
	MaxBackoff time.Duration
	// Multiplier is the growth of the wait from one attempt to the next (>= 1).
	Multiplier float64
	// Jitter randomises each wait by a factor in [1-Jitter, 1+Jitter] (0: none).
	Jitter float64
	// Deadline: no attempt starts later than this after the first one (-1: no limit).
	Deadline time.Duration
}

// DefaultRetryPolicy is the policy of unary calls: 5 attempts within 30 s, 100 ms doubling up
// to 5 s, ±20 % jitter.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 5, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second, Multiplier: 2, Jitter: 0.2, Deadline: 30 * time.Second}
}

// DefaultWatchRetryPolicy is the reconnection policy of status streams: keep trying for two
// minutes of consecutive failures (a server restart, a rolling deploy); the clock restarts
// whenever an event arrives.
func DefaultWatchRetryPolicy() RetryPolicy {
	p := DefaultRetryPolicy()
	p.MaxAttempts = -1
	p.Deadline = 2 * time.Minute
	return p
}

// NoRetry is a policy that never retries.
func NoRetry() RetryPolicy {
	p := DefaultRetryPolicy()
	p.MaxAttempts = 1
	return p
}

func (p RetryPolicy) normalized() RetryPolicy {
	d := DefaultRetryPolicy()
	if p.MaxAttempts == 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = d.InitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = d.MaxBackoff
	}
	if p.Multiplier < 1 {
		p.Multiplier = d.Multiplier
	}
	p.Jitter = math.Min(math.Max(p.Jitter, 0), 1)
	if p.Deadline == 0 {
		p.Deadline = d.Deadline
	}
	return p
}

// Backoff is the wait after failed attempt number attempt (1-based), before jitter.
func (p RetryPolicy) Backoff(attempt int) time.Duration {
	p = p.normalized()
	base := float64(p.InitialBackoff) * math.Pow(p.Multiplier, float64(max(attempt, 1)-1))
	return time.Duration(math.Min(base, float64(p.MaxBackoff)))
}

// retryState counts the attempts of one call (or one stream's reconnections).
type retryState struct {
	policy  RetryPolicy
	start   time.Time
	attempt int
}

func newRetryState(policy RetryPolicy) *retryState {
	return &retryState{policy: policy.normalized(), start: time.Now()}
}

// reset forgets earlier failures (a stream received an event: it was healthy again).
func (s *retryState) reset() {
	s.start = time.Now()
	s.attempt = 0
}

func (s *retryState) begin() { s.attempt++ }

// attemptTimeout is the timeout of the attempt about to start: timeout, cut to what is left of
// the deadline. 0 stays 0 (none): only the caller's context bounds the attempt.
func (s *retryState) attemptTimeout(timeout time.Duration) time.Duration {
	if s.policy.Deadline < 0 || timeout <= 0 {
		return timeout
	}
	left := max(s.policy.Deadline-time.Since(s.start), time.Millisecond)
	return min(timeout, left)
}

// nextDelay is the wait before the next attempt after err, or ok=false to give up.
func (s *retryState) nextDelay(err *Error, retryable bool) (time.Duration, bool) {
	if !retryable {
		return 0, false
	}
	// The server's RetryInfo is a minimum, even above MaxBackoff (the deadline still bounds it).
	return s.nextBackoff(err.RetryDelay)
}

func (s *retryState) nextBackoff(minimum time.Duration) (time.Duration, bool) {
	p := s.policy
	if p.MaxAttempts > 0 && s.attempt >= p.MaxAttempts {
		return 0, false
	}
	delay := p.Backoff(s.attempt)
	delay = time.Duration(float64(delay) * (1 + p.Jitter*(2*rand.Float64()-1)))
	delay = max(delay, minimum)
	if p.Deadline > 0 && delay >= p.Deadline-time.Since(s.start) {
		return 0, false
	}
	return delay, true
}

// sleep waits d or until ctx is done (then returns its error).
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// retryableUnary says whether a unary call that failed with err may be sent again: UNAVAILABLE,
// or RATE_LIMITED (the tenant's request budget; nothing was applied, and nextDelay waits at least
// the server's RetryInfo delay).
func retryableUnary(err *Error) bool {
	return err.GRPCCode == codes.Unavailable || err.Code == CodeRateLimited
}
