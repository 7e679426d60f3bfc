package storetest_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
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

// countingMember is a store member that records how it was stopped.
type countingMember struct {
	storetest.Member
	kills, closes *atomic.Int32
}

func (m countingMember) Kill() { m.kills.Add(1); m.Member.Kill() }
func (m countingMember) Close(ctx context.Context) error {
	m.closes.Add(1)
	return m.Member.Close(ctx)
}

// TestMembers: a cluster of members that WithOpen starts, named by WithIDs
// at the addresses of WithAddrs: Crash kills a member, Stop closes it,
// Restart opens it again, and a Reserved node joins once started and
// joined.
func TestMembers(t *testing.T) {
	var kills, closes atomic.Int32
	open := func(ctx context.Context, cfg raftstore.Config) (storetest.Member, error) {
		s, err := raftstore.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return countingMember{storetest.StoreMember(s), &kills, &closes}, nil
	}
	c := storetest.MakeCluster(t, 3, storetest.WithIDs("a", "b", "c"), storetest.WithOpen(open),
		storetest.WithAddrs(func(id string) string { return "addr-" + id }))
	ctx := context.Background()
	servers, err := c.Leader(t).Servers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range servers {
		got = append(got, string(s.ID)+"@"+string(s.Address))
	}
	if want := []string{"a@addr-a", "b@addr-b", "c@addr-c"}; !slices.Equal(got, want) {
		t.Fatalf("servers %v, want %v", got, want)
	}

	victim := c.Followers()[0].NodeID()
	c.Crash(victim)
	if c.Member(victim) != nil || kills.Load() != 1 || closes.Load() != 0 {
		t.Fatalf("after Crash: member %v, %d kills, %d closes", c.Member(victim), kills.Load(), closes.Load())
	}
	if _, ok := c.Restart(t, victim).(countingMember); !ok {
		t.Fatal("Restart did not open the member through WithOpen")
	}

	c.Reserve(t, "d")
	if c.Member("d") != nil || len(c.Members()) != 3 {
		t.Fatalf("a reserved node runs: %d members", len(c.Members()))
	}
	c.Restart(t, "d")
	if err := c.Leader(t).Join(ctx, "d", c.Addr("d")); err != nil {
		t.Fatal(err)
	}
	c.WaitDigestsEqual(t)
	if len(c.Members()) != 4 {
		t.Fatalf("%d members, want 4", len(c.Members()))
	}

	old := c.Leader(t).NodeID()
	if err := c.Stop(ctx, old); err != nil {
		t.Fatalf("stop the leader: %v", err)
	}
	if closes.Load() != 1 {
		t.Fatalf("Stop closed %d members", closes.Load())
	}
	if l := c.Leader(t); l.NodeID() == old {
		t.Fatalf("%s still leads after Stop", old)
	}
}
