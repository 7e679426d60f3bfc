// Package forward runs an operation on its site's Raft leader from any
// node, and holds the one table that carries errors across hops.
//
// Both the ETSI backend (node/kme: every call runs on the leader) and the
// admin API (node: membership, link, plugins) use one Forwarder: it runs
// the operation here when this node leads, else sends it to the leader;
// on not-leader or no-leader it waits (Backoff: 5 ms doubling to 100 ms,
// jittered) and tries again at whatever node leads by then, until the
// caller's deadline. The deadline travels to the leader as the remaining
// time (DeadlineHeader), so it shrinks along a chain of hops and does not
// depend on the nodes' clocks agreeing.
//
// Errors cross every hop as a wire code (Table): the sender encodes a
// sentinel error as its code and HTTP status (WriteError), the receiver
// decodes the code back into the sentinel (Send, *Error), and the ETSI
// handler sees the etsi sentinel of the row (ToETSI). A leader that cannot
// tell whether a command committed answers outcome-unknown: never retried
// unless the operation is idempotent.
package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"qkdkms/raftstore"
)

// Backoff is the wait between attempts: Min doubling up to Max, each wait
// drawn uniformly from its upper half so that nodes retrying together
// spread out.
type Backoff struct {
	Min, Max time.Duration
}

// DefaultBackoff is the one policy of both paths. An election takes about
// a heartbeat timeout (1 s by default, node/CONFIG.md); at most 100 ms
// between looks keeps a forwarded call from waiting much past it.
var DefaultBackoff = Backoff{Min: 5 * time.Millisecond, Max: 100 * time.Millisecond}

// Delay is the wait before retry n (0 for the first retry).
func (b Backoff) Delay(n int) time.Duration {
	d := b.Max
	if n < 32 && b.Min<<n < b.Max && b.Min<<n > 0 {
		d = b.Min << n
	}
	return d/2 + rand.N(d/2+1)
}

// Forwarder runs operations on the site's leader.
type Forwarder struct {
	// Leader reports whether this node leads the site and, when it does
	// not, the base URL ("https://host:port") of the node it believes
	// leads, "" when it knows none.
	Leader func() (self bool, base string)
	// Backoff is the wait between attempts (zero: DefaultBackoff).
	Backoff Backoff
	// Log, if set, records each retry at debug level.
	Log *slog.Logger

	// wait sleeps for d or until ctx ends (tests record the waits).
	wait func(ctx context.Context, d time.Duration) error
}

// Op is one operation to run on the leader.
type Op struct {
	// Name names the operation in errors and logs.
	Name string
	// Local runs the operation on this node, which leads. It returns
	// raftstore.ErrNotLeader or ErrNoLeader only when it changed nothing.
	Local func(ctx context.Context) error
	// Remote sends the operation to the leader at base (normally with
	// Send or Post, which encode the deadline and decode the error table).
	Remote func(ctx context.Context, base string) error
	// Idempotent: running the operation twice has the effect of running it
	// once (a request ID, or a command that is a no-op when repeated). An
	// outcome-unknown error (raftstore's, or a request sent without an
	// answer) is then retried; otherwise it is returned to the caller.
	Idempotent bool
}

// Do runs op on the leader: Local when this node leads, Remote at the
// leader otherwise, again after a backoff while the answer is not-leader
// or no-leader (or outcome-unknown, for an idempotent op), until ctx ends.
// Any other error is returned as it is (Table maps it to a code). When ctx
// ends first the error is no-leader, naming the last answer.
func (f *Forwarder) Do(ctx context.Context, op Op) error {
	b := f.Backoff
	if b.Min <= 0 || b.Max < b.Min {
		b = DefaultBackoff
	}
	wait := f.wait
	if wait == nil {
		wait = sleep
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: the caller's deadline passed before it ran: %w", op.Name, err)
	}
	for n := 0; ; n++ {
		var err error
		self, base := f.Leader()
		switch {
		case self:
			err = op.Local(ctx)
		case base != "":
			err = op.Remote(ctx, base)
		default:
			err = fmt.Errorf("%w: %s: this node knows no leader", raftstore.ErrNoLeader, op.Name)
		}
		if err == nil || !(Retryable(err) || op.Idempotent && OutcomeUnknown(err)) {
			return err
		}
		if f.Log != nil {
			f.Log.Debug("forward: retrying at the leader", "op", op.Name, "leader", base, "attempt", n+1, "err", err)
		}
		if ctx.Err() != nil || wait(ctx, b.Delay(n)) != nil {
			if errors.Is(err, raftstore.ErrNotLeader) || errors.Is(err, raftstore.ErrNoLeader) {
				return fmt.Errorf("%w: %s: none reachable before the deadline (last: %v)", raftstore.ErrNoLeader, op.Name, err)
			}
			return fmt.Errorf("%s: deadline passed: %w", op.Name, err)
		}
	}
}

// OutcomeUnknown reports whether err leaves open whether the operation
// ran: raftstore.ErrOutcomeUnknown at the leader, or a request sent without
// an answer.
func OutcomeUnknown(err error) bool {
	return err != nil && RowOf(err).Code == CodeOutcomeUnknown
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
