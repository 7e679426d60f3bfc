package link

import (
	"context"
	"errors"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
)

// TestPadsFromTheBlockInFlight: the pre-shared secret holds one session's
// pads, so session 2's pads come from block 1's pad material, which the
// slave site holds before the master site committed. Session 2 waits for
// that commit instead of using material that may be dropped; when the
// master's commit fails the slave drops block 1, no pad material exists
// any more (the operator must install a new secret), and the sites keep
// retrying without reserving pads that do not exist: the reserved offset
// stays put at both sites instead of creeping by a session's pads per
// attempt.
func TestPadsFromTheBlockInFlight(t *testing.T) {
	c := connection("sae-1", siteB, 1<<20)
	p := newPair(t, pairOpts{conns: []raftstore.Connection{c}, pskPads: 32})
	p.sa.setFault(func(ctx context.Context, call int, b raftstore.Block) error {
		if call != 1 {
			return nil
		}
		// Give Bob (the slave site, which has block 1 now) time to go
		// ahead with session 2's pads if it would.
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_ = testenv.Until(wctx, "Bob to read session 2's pads", func() bool { return len(p.sb.reads()) > 0 })
		return errors.New("injected master failure")
	})
	p.start()
	testenv.WaitFor(t, "block 1 dropped at the slave site", func() bool { return len(p.sb.dropped()) == 1 })
	if r := p.sb.reads(); len(r) != 0 {
		t.Fatalf("the slave site read pads %v from a block the master never committed", r)
	}
	offsets := func() (a, b uint64) {
		sa, _ := p.sa.LinkState(context.Background(), siteB)
		sb, _ := p.sb.LinkState(context.Background(), siteA)
		return sa.PadOffset, sb.PadOffset
	}
	a0, b0 := offsets()
	testenv.WaitFor(t, "three more connections", func() bool { return p.connections() >= 4 })
	p.stop()
	if a1, b1 := offsets(); a1 != a0 || b1 != b0 || a1 > 64 || b1 > 64 {
		t.Fatalf("reserved pad offsets went from %d/%d to %d/%d with no pad material to reserve", a0, b0, a1, b1)
	}
	checkAgree(t, p)
}
