package storetest_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
	"qkdkms/raftstore/storetest"
)

// TestCrashCutsOffUntilRestart: a crashed node refuses its peers' RPCs at
// once (no send timeout), still after Heal; the site writes without it,
// and after Restart it is reachable again and catches up.
func TestCrashCutsOffUntilRestart(t *testing.T) {
	c := storetest.MakeCluster(t, 3, storetest.WithIDPrefix("site-n"))
	if want := []string{"site-n0", "site-n1", "site-n2"}; !slices.Equal(c.IDs, want) {
		t.Fatalf("node IDs %v, want %v", c.IDs, want)
	}
	victim := c.Followers()[0].NodeID()
	live := c.Index(c.Leader(t).NodeID())
	vote := func() error {
		var resp raft.RequestVoteResponse
		return c.Trans[live].RequestVote(raft.ServerID(victim), raft.ServerAddress(victim), &raft.RequestVoteRequest{}, &resp)
	}
	c.Crash(victim)
	for _, when := range []string{"after Crash", "after Heal"} {
		if err := vote(); err == nil || !strings.Contains(err.Error(), "failed to connect") {
			t.Fatalf("RPC to the crashed node %s: %v, want a refused connection", when, err)
		}
		c.Heal()
	}
	ctx := context.Background()
	conn := raftstore.Connection{SourceKME: "a", TargetKME: "b", MasterSAE: "m", SlaveSAE: "s",
		KeySize: 256, MaxKeyCount: 10, MaxKeyPerRequest: 1, MinKeySize: 64, MaxKeySize: 256}
	testenv.WaitFor(t, "a write with one node down", func() bool {
		err := c.Leader(t).RegisterConnection(ctx, conn)
		return err == nil || errors.Is(err, raftstore.ErrConnectionExists)
	})
	c.Restart(t, victim)
	c.WaitDigestsEqual(t)
	if _, err := c.Store(victim).LocalConnection("m", "s"); err != nil {
		t.Fatalf("restarted node did not catch up: %v", err)
	}
}
