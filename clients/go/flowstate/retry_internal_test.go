package flowstate

import (
	"testing"
	"time"
)

// A zero timeout leaves the attempt to the caller's context (it used to be cut to the retry
// deadline), and the server's RetryInfo is a minimum even above MaxBackoff.
func TestRetryStateTimeoutAndServerDelay(t *testing.T) {
	state := newRetryState(RetryPolicy{MaxAttempts: 5, MaxBackoff: time.Second, Deadline: time.Minute})
	if got := state.attemptTimeout(0); got != 0 {
		t.Fatalf("attemptTimeout(0) = %v, want 0 (none)", got)
	}
	if got := state.attemptTimeout(time.Hour); got > time.Minute {
		t.Fatalf("attemptTimeout(1h) = %v, want at most the deadline left", got)
	}
	state.begin()
	delay, ok := state.nextDelay(&Error{RetryDelay: 7 * time.Second}, true)
	if !ok || delay < 7*time.Second {
		t.Fatalf("nextDelay with RetryInfo 7s = %v, %v", delay, ok)
	}
	if _, ok := state.nextDelay(&Error{RetryDelay: 2 * time.Minute}, true); ok {
		t.Fatal("a server delay past the deadline should give up")
	}
}
