package kme

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"qkdkms/raftstore"
)

// timingSite records the latency of each Site call (benchmark diagnostics).
type timingSite struct {
	raftstore.Site
	mu  sync.Mutex
	lat map[string][]time.Duration
}

func (t *timingSite) rec(name string, start time.Time) {
	d := time.Since(start)
	t.mu.Lock()
	if t.lat == nil {
		t.lat = map[string][]time.Duration{}
	}
	t.lat[name] = append(t.lat[name], d)
	t.mu.Unlock()
}

func (t *timingSite) IssueKeys(ctx context.Context, r raftstore.IssueRequest) (raftstore.Issued, error) {
	defer t.rec("IssueKeys", time.Now())
	return t.Site.IssueKeys(ctx, r)
}

func (t *timingSite) RecordAssignment(ctx context.Context, a raftstore.Assignment) error {
	defer t.rec("RecordAssignment", time.Now())
	return t.Site.RecordAssignment(ctx, a)
}

func (t *timingSite) ConsumeKeys(ctx context.Context, r raftstore.ConsumeRequest) ([]raftstore.Key, error) {
	defer t.rec("ConsumeKeys", time.Now())
	return t.Site.ConsumeKeys(ctx, r)
}

func (t *timingSite) Connection(ctx context.Context, m, s string) (raftstore.ConnectionStatus, error) {
	defer t.rec("Connection", time.Now())
	return t.Site.Connection(ctx, m, s)
}

func (t *timingSite) report(tb testing.TB, node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, l := range t.lat {
		slices.Sort(l)
		if len(l) > 100 || strings.HasSuffix(name, "ERR") {
			tb.Logf("%s %s: n=%d p50 %v p99 %v", node, name, len(l), l[len(l)/2], l[len(l)*99/100])
		}
	}
}

// timingRT records round-trip latency per internal path (diagnostics).
type timingRT struct {
	http.RoundTripper
	ts *timingSite
}

func (t timingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.RoundTripper.RoundTrip(r)
	name := "rt " + r.URL.Path
	if err != nil {
		name += " ERR"
	}
	t.ts.rec(name, start)
	return resp, err
}
