// Package testenv is what the project's tests share about time: whether
// the binary runs under the race detector, the factor by which tests
// stretch the timeouts they give a cluster, and the one wait helper.
//
// Tests never assert how long something took. They wait for what a user
// would check (a leader, a key, a status) with WaitFor, and give Raft the
// timeouts of Scaled, so that a slow machine or -race makes a test slower,
// not red.
package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Factor stretches test timeouts: the race detector slows code down
// several times, and the machines that run the tests are shared.
var Factor = func() time.Duration {
	if Race {
		return 5
	}
	return 1
}()

// Scaled is d stretched by Factor: Raft's heartbeat, election and lease
// timeouts in tests, and the deadlines of calls that a test expects to
// succeed.
func Scaled(d time.Duration) time.Duration { return d * Factor }

// Patience is how long WaitFor waits before it gives up: far longer than
// anything should take, so that reaching it means the condition will not
// come true.
var Patience = Scaled(time.Minute)

// WaitFor polls cond until it holds and fails tb, naming what it waited
// for, when it does not hold within Patience.
func WaitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	WaitWithin(tb, what, Patience, cond)
}

// WaitWithin is WaitFor with a patience of d (scaled), for what takes
// longer than Patience by design: a pool that WASM sessions over the
// simulated fiber fill in the end-to-end tests.
func WaitWithin(tb testing.TB, what string, d time.Duration, cond func() bool) {
	tb.Helper()
	if err := until(context.Background(), what, Scaled(d), cond); err != nil {
		tb.Fatal(err)
	}
}

// Until is WaitFor for code that must not fail the test itself (a
// callback on another goroutine): it returns an error naming what it
// waited for when cond does not hold within Patience or ctx ends first.
func Until(ctx context.Context, what string, cond func() bool) error {
	return until(ctx, what, Patience, cond)
}

func until(ctx context.Context, what string, patience time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting for %s: %w", what, context.Cause(ctx))
		case <-tick.C:
		}
	}
	return nil
}
