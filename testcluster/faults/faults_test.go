package faults

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestScenarios: every scenario is filed under its own name, says what it
// does and has a fault; Names lists them all, sorted.
func TestScenarios(t *testing.T) {
	for key, sc := range Scenarios {
		if sc.Name != key {
			t.Errorf("scenario %q is named %q: reports would carry the wrong name", key, sc.Name)
		}
		if sc.Description == "" || sc.Fault == nil {
			t.Errorf("scenario %q: description %q, fault set %v", key, sc.Description, sc.Fault != nil)
		}
	}
	names := Names()
	if len(names) != len(Scenarios) || !slices.IsSorted(names) {
		t.Fatalf("Names() = %v: want the %d scenarios, sorted", names, len(Scenarios))
	}
	for _, want := range []string{"none", "leader-kill", "leader-stop", "site-restart"} {
		if !slices.Contains(names, want) {
			t.Errorf("no scenario %q (README, Failover experiments)", want)
		}
	}
}

// TestEvery: every repeats f until ctx ends, and stops at f's first error,
// wrapped.
func TestEvery(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		failAt  int // call that returns boom (0: none)
		stopAt  int // call after which ctx is cancelled (0: none)
		calls   int
		wantErr error
	}{
		{name: "until cancelled", stopAt: 3, calls: 3},
		{name: "first error ends it", failAt: 2, calls: 2, wantErr: boom},
		{name: "error on the first call", failAt: 1, calls: 1, wantErr: boom},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n := 0
			err := every(ctx, time.Millisecond, func() error {
				n++
				if n == tc.stopAt {
					cancel()
				}
				if n == tc.failAt {
					return boom
				}
				return nil
			})
			if n != tc.calls || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("%d calls, err %v; want %d calls, err %v", n, err, tc.calls, tc.wantErr)
			}
		})
	}
}

// TestEveryLeavesLastPeriodQuiet: with less than one period left before
// the deadline no fault starts, so the run ends healed.
func TestEveryLeavesLastPeriodQuiet(t *testing.T) {
	// After the first 50 ms period at most 30 ms are left: less than a
	// period, however slow the machine.
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Millisecond)
	defer cancel()
	n := 0
	if err := every(ctx, 50*time.Millisecond, func() error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("%d calls, err %v; want none: less than a period was left after the first", n, err)
	}
}

// TestSleep: Sleep reports whether it slept the whole time.
func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep on a live context: false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep on a cancelled context: true")
	}
}
