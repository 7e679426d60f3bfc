package node

import (
	"context"
	"sync"

	"qkdkms/raftstore"
)

// leaderDuty runs duties while this node leads its site: each one is
// started with a context that ends when leadership is lost (or the duty is
// stopped), and waited for before the next term's start.
type leaderDuty struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// start follows store's leadership and runs every duty in its own
// goroutine during each term this node leads.
func (d *leaderDuty) start(store *raftstore.Store, duties ...func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	d.mu.Lock()
	d.cancel = cancel
	d.mu.Unlock()
	changes := store.LeaderChanges(ctx)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		var term *leaderTerm
		defer func() { term.halt() }()
		for {
			select {
			case <-ctx.Done():
				return
			case leader, ok := <-changes:
				if !ok {
					return
				}
				term.halt()
				term = nil
				if leader {
					term = runTerm(ctx, duties)
				}
			}
		}
	}()
}

// stop ends the current term's duties and the following; it returns once
// they returned. Safe before start.
func (d *leaderDuty) stop() {
	d.mu.Lock()
	cancel := d.cancel
	d.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	d.wg.Wait()
}

// leaderTerm is one term of leadership's duties.
type leaderTerm struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func runTerm(ctx context.Context, duties []func(context.Context)) *leaderTerm {
	tctx, cancel := context.WithCancel(ctx)
	t := &leaderTerm{cancel: cancel}
	for _, duty := range duties {
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			duty(tctx)
		}()
	}
	return t
}

// halt stops the term's duties and waits for them; nil-safe.
func (t *leaderTerm) halt() {
	if t == nil {
		return
	}
	t.cancel()
	t.wg.Wait()
}
