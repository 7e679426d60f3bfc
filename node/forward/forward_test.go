package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
)

// recorder is a Forwarder's wait that records the backoff instead of
// sleeping.
type recorder struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (r *recorder) wait(ctx context.Context, d time.Duration) error {
	r.mu.Lock()
	r.waits = append(r.waits, d)
	r.mu.Unlock()
	return ctx.Err()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.waits)
}

type answer struct {
	Served string `json:"served"`
}

// leaderServer answers op as the leader.
func leaderServer(t *testing.T, name string, hits *atomic.Int32) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"served":"` + name + `"}`))
	}))
	t.Cleanup(s.Close)
	return s
}

// refusingServer answers every call with err's error body.
func refusingServer(t *testing.T, err error, hits *atomic.Int32) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		WriteError(w, err)
	}))
	t.Cleanup(s.Close)
	return s
}

func postOp(name string, out *answer, idempotent bool) Op {
	return Op{
		Name:  name,
		Local: func(context.Context) error { return errors.New("this node does not lead in this test") },
		Remote: func(ctx context.Context, base string) error {
			return Post(ctx, http.DefaultClient, base+"/op", struct{}{}, out, nil)
		},
		Idempotent: idempotent,
	}
}

// TestNotLeaderFollowsNewLeader: the node believed to lead answers
// not-leader; the forwarder tries again at the node that leads by then.
func TestNotLeaderFollowsNewLeader(t *testing.T) {
	var oldHits, newHits atomic.Int32
	old := refusingServer(t, raftstore.ErrNotLeader, &oldHits)
	cur := leaderServer(t, "new", &newHits)
	rec := &recorder{}
	f := Forwarder{
		Leader: func() (bool, string) {
			if oldHits.Load() == 0 {
				return false, old.URL
			}
			return false, cur.URL
		},
		wait: rec.wait,
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(10*time.Second))
	defer cancel()
	var out answer
	if err := f.Do(ctx, postOp("op", &out, false)); err != nil {
		t.Fatal(err)
	}
	if out.Served != "new" || oldHits.Load() != 1 || newHits.Load() != 1 || rec.count() != 1 {
		t.Errorf("served by %q, old hit %d, new hit %d, %d waits; want new, 1, 1, 1",
			out.Served, oldHits.Load(), newHits.Load(), rec.count())
	}
}

// TestLocalLostLeadership: this node led, lost leadership before running
// the op (not-leader, nothing changed), and the op goes to the new leader.
func TestLocalLostLeadership(t *testing.T) {
	var hits atomic.Int32
	cur := leaderServer(t, "new", &hits)
	var locals atomic.Int32
	f := Forwarder{
		Leader: func() (bool, string) {
			if locals.Load() == 0 {
				return true, ""
			}
			return false, cur.URL
		},
		wait: (&recorder{}).wait,
	}
	var out answer
	op := postOp("op", &out, false)
	op.Local = func(context.Context) error {
		locals.Add(1)
		return raftstore.ErrNotLeader
	}
	if err := f.Do(context.Background(), op); err != nil {
		t.Fatal(err)
	}
	if locals.Load() != 1 || hits.Load() != 1 || out.Served != "new" {
		t.Errorf("local %d, remote %d, served by %q", locals.Load(), hits.Load(), out.Served)
	}
}

// TestOutcomeUnknown: an answer that leaves open whether the op ran is
// retried only for an idempotent op.
func TestOutcomeUnknown(t *testing.T) {
	// A leader whose command's outcome is unknown; and one that takes the
	// request and drops the connection before answering.
	var refused, dropped atomic.Int32
	unknown := refusingServer(t, fmt.Errorf("apply: %w", raftstore.ErrOutcomeUnknown), &refused)
	dropper := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dropped.Add(1)
		c, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = c.Close()
		}
	}))
	t.Cleanup(dropper.Close)

	tests := []struct {
		name       string
		base       string
		hits       *atomic.Int32
		idempotent bool
	}{
		{"leader says outcome unknown", unknown.URL, &refused, false},
		{"leader says outcome unknown, idempotent", unknown.URL, &refused, true},
		{"answer lost", dropper.URL, &dropped, false},
		{"answer lost, idempotent", dropper.URL, &dropped, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.hits.Store(0)
			rec := &recorder{}
			f := Forwarder{Leader: func() (bool, string) { return false, tc.base }, wait: rec.wait}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.idempotent {
				// Let it try three times, then end the caller's wait.
				f.wait = func(ctx context.Context, d time.Duration) error {
					if rec.wait(ctx, d); rec.count() == 3 {
						cancel()
					}
					return ctx.Err()
				}
			}
			var out answer
			err := f.Do(ctx, postOp("op", &out, tc.idempotent))
			if !errors.Is(err, raftstore.ErrOutcomeUnknown) || CodeOf(err) != CodeOutcomeUnknown {
				t.Fatalf("err = %v (code %s), want outcome unknown", err, CodeOf(err))
			}
			want := int32(1)
			if tc.idempotent {
				want = 3
			}
			if got := tc.hits.Load(); got != want {
				t.Errorf("%d attempts, want %d", got, want)
			}
		})
	}
}

// TestDialFailureRetried: a request that never left this node (the
// leader's port is closed) changed nothing and is retried even for an op
// that is not idempotent.
func TestDialFailureRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := "http://" + ln.Addr().String()
	_ = ln.Close()
	var hits atomic.Int32
	cur := leaderServer(t, "up", &hits)
	rec := &recorder{}
	f := Forwarder{
		Leader: func() (bool, string) {
			if rec.count() < 2 {
				return false, gone
			}
			return false, cur.URL
		},
		wait: rec.wait,
	}
	var out answer
	if err := f.Do(context.Background(), postOp("op", &out, false)); err != nil {
		t.Fatal(err)
	}
	if out.Served != "up" || rec.count() != 2 {
		t.Errorf("served by %q after %d waits, want up after 2", out.Served, rec.count())
	}
}

// TestOtherErrorsNotRetried: an answer from the leader that is no
// leadership error comes back at once, with its sentinel.
func TestOtherErrorsNotRetried(t *testing.T) {
	var hits atomic.Int32
	s := refusingServer(t, raftstore.ErrInsufficientKeys, &hits)
	rec := &recorder{}
	f := Forwarder{Leader: func() (bool, string) { return false, s.URL }, wait: rec.wait}
	var out answer
	err := f.Do(context.Background(), postOp("op", &out, true))
	if CodeOf(err) != CodeInsufficient || hits.Load() != 1 || rec.count() != 0 {
		t.Errorf("err %v after %d attempts, %d waits; want insufficient_keys at once", err, hits.Load(), rec.count())
	}
}

// TestBackoffBounded: the waits double from Min, never exceed Max, and
// the forwarder gives up with no-leader when the caller's deadline ends.
func TestBackoffBounded(t *testing.T) {
	b := DefaultBackoff
	for n := range 70 {
		ceil := min(b.Min<<min(n, 30), b.Max)
		for range 20 {
			if d := b.Delay(n); d < ceil/2 || d > ceil {
				t.Fatalf("Delay(%d) = %v, want within [%v, %v]", n, d, ceil/2, ceil)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &recorder{}
	f := Forwarder{
		Leader: func() (bool, string) { return false, "" }, // an election that never ends
		wait: func(ctx context.Context, d time.Duration) error {
			if rec.wait(ctx, d); rec.count() == 50 {
				cancel()
			}
			return ctx.Err()
		},
	}
	err := f.Do(ctx, Op{Name: "op"})
	if !errors.Is(err, raftstore.ErrNoLeader) || CodeOf(err) != CodeNoLeader {
		t.Fatalf("err = %v, want no-leader", err)
	}
	var total time.Duration
	for i, d := range rec.waits {
		if d > b.Max || d < b.Min/2 {
			t.Errorf("wait %d = %v, outside [%v, %v]", i, d, b.Min/2, b.Max)
		}
		total += d
	}
	if rec.count() != 50 || total < 50*b.Max/4 {
		t.Errorf("%d waits totalling %v: backoff did not grow to its cap", rec.count(), total)
	}
}

// TestDeadlineShrinksAcrossHops: node A forwards to B, B calls C; each
// hop receives what is left of its caller's time, never more, and reads it
// as its own deadline.
func TestDeadlineShrinksAcrossHops(t *testing.T) {
	var atB, atC int64 // the remaining ms each hop received
	var deadlineC bool
	c := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		atC, _ = strconv.ParseInt(r.Header.Get(DeadlineHeader), 10, 64)
		ctx, cancel := Context(r, 0)
		defer cancel()
		_, deadlineC = ctx.Deadline()
		_, _ = w.Write([]byte(`{"served":"C"}`))
	}))
	t.Cleanup(c.Close)
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		atB, _ = strconv.ParseInt(r.Header.Get(DeadlineHeader), 10, 64)
		ctx, cancel := Context(r, 0)
		defer cancel()
		var out answer
		if err := Post(ctx, http.DefaultClient, c.URL, struct{}{}, &out, nil); err != nil {
			WriteError(w, err)
			return
		}
		_, _ = w.Write([]byte(`{"served":"B"}`))
	}))
	t.Cleanup(b.Close)

	budget := testenv.Scaled(5 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	f := Forwarder{Leader: func() (bool, string) { return false, b.URL }}
	var out answer
	if err := f.Do(ctx, postOp("op", &out, false)); err != nil {
		t.Fatal(err)
	}
	if atB <= 0 || atC <= 0 || !deadlineC {
		t.Fatalf("a hop received no time: B %d ms, C %d ms (deadline set %v)", atB, atC, deadlineC)
	}
	if atB > budget.Milliseconds() || atC > atB {
		t.Errorf("time grew along the chain: A %d ms, B %d ms, C %d ms", budget.Milliseconds(), atB, atC)
	}
}

// TestDeadlineHeaders: the relative header, the legacy absolute one an
// older node sends during a rolling upgrade, and the cap.
func TestDeadlineHeaders(t *testing.T) {
	now := time.Now()
	abs := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).UnixNano(), 10) }
	tests := []struct {
		name     string
		relMs    string
		legacy   string
		limit    time.Duration
		want     time.Duration // from now; 0: no deadline
		tolerate time.Duration
	}{
		{"none", "", "", 0, 0, 0},
		{"relative", "2000", "", 0, 2 * time.Second, time.Second},
		{"legacy from an older node", "", abs(3 * time.Second), 0, 3 * time.Second, 0},
		{"relative wins over legacy", "2000", abs(time.Hour), 0, 2 * time.Second, time.Second},
		{"limit caps relative", "60000", "", 5 * time.Second, 5 * time.Second, time.Second},
		{"limit caps legacy (clocks apart)", "", abs(time.Hour), 5 * time.Second, 5 * time.Second, time.Second},
		{"limit alone", "", "", 5 * time.Second, 5 * time.Second, time.Second},
		{"garbage ignored", "soon", "later", 0, 0, 0},
		{"non-positive ignored", "-5", "0", 0, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			if tc.relMs != "" {
				r.Header.Set(DeadlineHeader, tc.relMs)
			}
			if tc.legacy != "" {
				r.Header.Set(LegacyDeadlineHeader, tc.legacy)
			}
			d, ok := Deadline(r, tc.limit)
			if ok != (tc.want != 0) {
				t.Fatalf("deadline %v (ok %v), want one: %v", d, ok, tc.want != 0)
			}
			if !ok {
				return
			}
			if got := d.Sub(now); got < tc.want || got > tc.want+tc.tolerate {
				t.Errorf("deadline in %v, want %v (+%v)", got, tc.want, tc.tolerate)
			}
		})
	}
}

// TestSendsOnlyRelative: a new node sends the relative header only.
func TestSendsOnlyRelative(t *testing.T) {
	var got http.Header
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(s.Close)
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(5*time.Second))
	defer cancel()
	if err := Post(ctx, http.DefaultClient, s.URL, struct{}{}, &struct{}{}, nil); err != nil {
		t.Fatal(err)
	}
	ms, err := strconv.ParseInt(got.Get(DeadlineHeader), 10, 64)
	if err != nil || ms <= 0 || ms > testenv.Scaled(5*time.Second).Milliseconds() {
		t.Errorf("%s = %q", DeadlineHeader, got.Get(DeadlineHeader))
	}
	if v := got.Get(LegacyDeadlineHeader); v != "" {
		t.Errorf("sent the legacy header %s: %q", LegacyDeadlineHeader, v)
	}
}

// TestNoTimeLeft: a call whose deadline already passed (an older node's
// absolute deadline, clocks apart) runs nowhere and answers unavailable.
func TestNoTimeLeft(t *testing.T) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	var ran atomic.Int32
	f := Forwarder{Leader: func() (bool, string) { return true, "" }}
	err := f.Do(ctx, Op{Name: "op", Local: func(context.Context) error { ran.Add(1); return nil }})
	if CodeOf(err) != CodeUnavailable || ran.Load() != 0 {
		t.Errorf("err %v (code %s), ran %d times; want unavailable, never run", err, CodeOf(err), ran.Load())
	}
}
