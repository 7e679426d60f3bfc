package raftstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"qkdkms/plugins/testenv"
)

// TestRelayKey: relay material enters with link blocks (add_block v4) and
// leaves by ordered, idempotent consumption (relay); no relay-key byte is
// ever consumed twice, consumed material can no longer be read, and a
// link block whose relay material was used cannot be dropped.
func TestRelayKey(t *testing.T) {
	ctx := context.Background()
	dir, kek := t.TempDir(), newKEK(t)
	s := openSingle(t, dir, kek, io.Discard, nil)
	testenv.WaitFor(t, "cluster version 4", func() bool { return s.ClusterVersion() == MaxVersion })
	conn := Connection{MasterSAE: "A", SlaveSAE: "B", KeySize: 256, MaxKeyPerRequest: 8}
	if err := s.RegisterConnection(ctx, conn); err != nil {
		t.Fatal(err)
	}
	r1, r2, r3 := rnd(200), rnd(120), rnd(10) // 100 and 60 bytes per direction, then 10 for direction 1
	for _, b := range []Block{
		{ConnectionID: conn.ID(), BlockID: "blk1", Bits: rnd(32), LinkPeer: "KB", AuthBits: rnd(16), RelayBits: r1, RelaySplit: 100},
		{ConnectionID: conn.ID(), BlockID: "blk2", LinkPeer: "KB", RelayBits: r2, RelaySplit: 60},
		{ConnectionID: conn.ID(), BlockID: "blk3", LinkPeer: "KB", RelayBits: r3, RelaySplit: 0}, // direction 1 only
	} {
		if err := s.AddBlock(ctx, b); err != nil {
			t.Fatalf("add %s: %v", b.BlockID, err)
		}
	}
	if err := s.AddBlock(ctx, Block{ConnectionID: conn.ID(), BlockID: "x", Bits: rnd(8), RelayBits: rnd(8)}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("relay bits without a link peer: %v", err)
	}
	if err := s.AddBlock(ctx, Block{BlockID: "split", LinkPeer: "KB", RelayBits: rnd(7), RelaySplit: 8}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("relay split beyond the bits: %v", err)
	}
	// Direction 0 is the first RelaySplit bytes of each block's relay
	// material, direction 1 the rest.
	streams := [2][]byte{append(bytes.Clone(r1[:100]), r2[:60]...), append(append(bytes.Clone(r1[100:]), r2[60:]...), r3...)}
	for dir, stream := range streams {
		got, err := s.RelayKey(ctx, "KB", uint8(dir), 90, 120)
		if err != nil || !bytes.Equal(got, stream[90:120]) {
			t.Fatalf("relay key of direction %d across blocks: %v", dir, err)
		}
	}
	delivered := rnd(24)
	type op struct {
		name string
		kind string // send, receive, deliver, burn
		u    RelayUse
		want error
	}
	ops := []op{
		{"send", "send", RelayUse{"KB", 0, "r1", 0, 40}, nil},
		{"retry is the first outcome", "send", RelayUse{"KB", 0, "r1", 0, 40}, nil},
		{"same block, other range", "send", RelayUse{"KB", 0, "r1", 40, 80}, ErrInvalid},
		{"overlaps used key", "send", RelayUse{"KB", 0, "r2", 30, 50}, ErrInvalid},
		{"backwards", "send", RelayUse{"KB", 0, "r2", 0, 10}, ErrInvalid},
		{"beyond the stream", "send", RelayUse{"KB", 0, "r2", 150, 161}, ErrInsufficientKeys},
		{"empty range", "send", RelayUse{"KB", 0, "r2", 50, 50}, ErrInvalid},
		{"no link", "send", RelayUse{"KC", 0, "r2", 0, 8}, ErrInsufficientKeys},
		{"skip ahead", "deliver", RelayUse{"KB", 0, "r2", 50, 74}, nil},
		{"deliver retry", "deliver", RelayUse{"KB", 0, "r2", 50, 74}, nil},
		{"sent block delivered", "deliver", RelayUse{"KB", 0, "r1", 0, 40}, ErrInvalid},
		{"burn unknown block", "burn", RelayUse{"KB", 0, "r3", 74, 90}, nil},
		{"burned block never delivered", "deliver", RelayUse{"KB", 0, "r3", 74, 90}, ErrKeyNotFound},
		{"burn a delivered block", "burn", RelayUse{"KB", 0, "r2", 50, 74}, nil},
		{"burn again", "burn", RelayUse{"KB", 0, "r2", 50, 74}, nil},
		{"below burned range", "send", RelayUse{"KB", 0, "r4", 80, 100}, ErrInvalid},
		{"rest of the stream", "send", RelayUse{"KB", 0, "r4", 90, 160}, nil},
		{"the other direction is its own stream", "send", RelayUse{"KB", 1, "r6", 0, 40}, nil},
		{"direction 1 holds the third block", "send", RelayUse{"KB", 1, "r8", 160, 171}, ErrInsufficientKeys},
		{"received is not sent", "receive", RelayUse{"KB", 1, "r6", 0, 40}, ErrInvalid},
		{"receive", "receive", RelayUse{"KB", 1, "r7", 40, 60}, nil},
		{"receive retry", "receive", RelayUse{"KB", 1, "r7", 40, 60}, nil},
	}
	var used [2][][2]uint64
	for _, o := range ops {
		var err error
		switch o.kind {
		case "send":
			err = s.RelaySend(ctx, o.u)
		case "receive":
			err = s.RelayReceive(ctx, o.u)
		case "deliver":
			err = s.RelayDeliver(ctx, o.u, conn.ID(), delivered)
		case "burn":
			err = s.RelayBurn(ctx, o.u)
		}
		if !errors.Is(err, o.want) {
			t.Fatalf("%s: %v, want %v", o.name, err, o.want)
		}
		if err == nil {
			used[o.u.Dir] = append(used[o.u.Dir], [2]uint64{o.u.From, o.u.To})
		}
		for dir, rs := range s.RelayStreams("KB") {
			if _, err := s.RelayKey(ctx, "KB", uint8(dir), rs.Used-1, rs.Used); rs.Used > 0 && !errors.Is(err, ErrKeyNotFound) {
				t.Fatalf("%s: consumed relay key of direction %d still readable: %v", o.name, dir, err)
			}
		}
	}
	// Every successful consumption is either a retry of the same block's
	// range or disjoint from all others: no byte is used for two blocks.
	for _, used := range used {
		for i, a := range used {
			for _, b := range used[i+1:] {
				if a != b && a[0] < b[1] && b[0] < a[1] {
					t.Fatalf("relay key ranges %v and %v overlap", a, b)
				}
			}
		}
	}
	st, err := s.Connection(ctx, "A", "B")
	if err != nil || st.StoredBits != 32*8 {
		t.Fatalf("pool after the burned delivery: %d bits, %v (want the link block only)", st.StoredBits, err)
	}
	if o, ok, err := s.RelayOutcome(ctx, "KB", 0, "r2"); err != nil || !ok || o.State != "burned" {
		t.Fatalf("outcome of r2: %+v %v %v", o, ok, err)
	}
	// blk2's relay material is consumed: it cannot be dropped any more.
	if err := s.DropLastBlock(ctx, "KB", "blk2"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("drop a block whose relay key was used: %v", err)
	}
	// The state survives a restart (snapshot and log replay) unchanged.
	_, want := s.fsm.digest()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	s = openSingle(t, dir, kek, io.Discard, nil)
	testenv.WaitFor(t, "the state replayed", func() bool { _, d := s.fsm.digest(); return d == want })
	if err := s.RelaySend(ctx, RelayUse{"KB", 0, "r1", 0, 40}); err != nil {
		t.Fatalf("retry after restart: %v", err)
	}
	if err := s.RelaySend(ctx, RelayUse{"KB", 0, "r5", 100, 120}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reuse after restart: %v", err)
	}
}

// TestRelayDropUnused: the history check may drop a link block whose relay
// material is untouched; the stream shrinks back.
func TestRelayDropUnused(t *testing.T) {
	ctx := context.Background()
	s := openSingle(t, t.TempDir(), newKEK(t), io.Discard, nil)
	testenv.WaitFor(t, "cluster version 4", func() bool { return s.ClusterVersion() == MaxVersion })
	conn := Connection{MasterSAE: "A", SlaveSAE: "B", KeySize: 256, MaxKeyPerRequest: 8}
	if err := s.RegisterConnection(ctx, conn); err != nil {
		t.Fatal(err)
	}
	for i, n := range []int{80, 60} {
		b := Block{ConnectionID: conn.ID(), BlockID: []string{"b1", "b2"}[i], Bits: rnd(16), LinkPeer: "KB", RelayBits: rnd(n), RelaySplit: n / 2}
		if err := s.AddBlock(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RelaySend(ctx, RelayUse{"KB", 0, "r1", 0, 40}); err != nil {
		t.Fatal(err)
	}
	if err := s.DropLastBlock(ctx, "KB", "b2"); err != nil {
		t.Fatalf("drop a block with unused relay key: %v", err)
	}
	ls, err := s.LinkState(ctx, "KB")
	if err != nil || ls.Relay[0] != (RelayStream{Stream: 40, Used: 40}) || ls.Relay[1] != (RelayStream{Stream: 40}) || !ls.RelayEnabled {
		t.Fatalf("after drop: %+v %v", ls, err)
	}
	if err := s.RelaySend(ctx, RelayUse{"KB", 0, "r2", 40, 41}); !errors.Is(err, ErrInsufficientKeys) {
		t.Fatalf("relay key of the dropped block: %v", err)
	}
	// A block with relay material for one direction only drops too.
	if err := s.AddBlock(ctx, Block{ConnectionID: conn.ID(), BlockID: "b3", LinkPeer: "KB", RelayBits: rnd(20), RelaySplit: 20}); err != nil {
		t.Fatal(err)
	}
	if err := s.DropLastBlock(ctx, "KB", "b3"); err != nil {
		t.Fatalf("drop a block with relay key for one direction: %v", err)
	}
	if ls, _ := s.LinkState(ctx, "KB"); ls.Relay[0] != (RelayStream{Stream: 40, Used: 40}) || ls.Relay[1] != (RelayStream{Stream: 40}) {
		t.Fatalf("after dropping b3: %+v", ls.Relay)
	}
}

// TestRelaySourceAndDestination: a relayed block's life at its source
// (started with its bits parked, then done into the pool or burned) and at
// its destination (delivered, then burned out of the pool while unused,
// or burned before it arrives so that it is refused when it does).
func TestRelaySourceAndDestination(t *testing.T) {
	ctx := context.Background()
	dir, kek := t.TempDir(), newKEK(t)
	s := openSingle(t, dir, kek, io.Discard, nil)
	testenv.WaitFor(t, "cluster version 4", func() bool { return s.ClusterVersion() == MaxVersion })
	conn := Connection{MasterSAE: "A", SlaveSAE: "C", KeySize: 64, MaxKeyPerRequest: 8}
	if err := s.RegisterConnection(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := s.AddBlock(ctx, Block{BlockID: "relay-only", LinkPeer: "KB", RelayBits: rnd(400), RelaySplit: 200}); err != nil {
		t.Fatalf("a link block of relay material only: %v", err)
	}
	pool := func() ConnectionStatus {
		t.Helper()
		st, err := s.Connection(ctx, "A", "C")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	// Source: x1 parked, a second block refused while it is on its way.
	if err := s.RelayStart(ctx, RelayUse{"KB", 0, "x1", 0, 40}, conn.ID(), rnd(8)); err != nil {
		t.Fatal(err)
	}
	if err := s.RelayStart(ctx, RelayUse{"KB", 0, "x2", 40, 80}, conn.ID(), rnd(8)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("second block on its way: %v", err)
	}
	if st := pool(); st.RelayPending != "x1" || st.StoredBits != 0 {
		t.Fatalf("while x1 is on its way: %+v", st)
	}
	// The pending block survives a restart.
	_, want := s.fsm.digest()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	s = openSingle(t, dir, kek, io.Discard, nil)
	testenv.WaitFor(t, "the state replayed", func() bool { _, d := s.fsm.digest(); return d == want })
	for range 2 { // done is idempotent
		if err := s.RelayDone(ctx, conn.ID(), "x1", 80); err != nil {
			t.Fatal(err)
		}
	}
	if st := pool(); st.RelayPending != "" || st.StoredBits != 64 || st.Relay != (RelayCounts{Done: 1, DoneBits: 64, HopBytes: 80}) {
		t.Fatalf("after x1 done: %+v", st)
	}
	// x2 burned at the source: never in the pool, its ID never again.
	if err := s.RelayStart(ctx, RelayUse{"KB", 0, "x2", 40, 80}, conn.ID(), rnd(8)); err != nil {
		t.Fatal(err)
	}
	if err := s.RelayDiscard(ctx, conn.ID(), "x2"); err != nil {
		t.Fatal(err)
	}
	if err := s.RelayStart(ctx, RelayUse{"KB", 0, "x2b", 80, 120}, conn.ID(), rnd(8)); err != nil {
		t.Fatal(err)
	}
	if err := s.RelayDone(ctx, conn.ID(), "x2", 80); !errors.Is(err, ErrInvalid) {
		t.Fatalf("done after burn: %v", err)
	}
	if err := s.RelayDiscard(ctx, conn.ID(), "x2b"); err != nil {
		t.Fatal(err)
	}
	if st := pool(); st.Relay.Burned != 2 || st.Relay.Done != 1 {
		t.Fatalf("after two burns: %+v", st.Relay)
	}
	// Destination (this site as the receiving end of direction 1): y1
	// delivered then burned while unused; y2 burned before it arrives.
	if err := s.RelayDeliver(ctx, RelayUse{"KB", 1, "y1", 0, 40}, conn.ID(), rnd(8)); err != nil {
		t.Fatal(err)
	}
	if st := pool(); st.StoredBits != 128 {
		t.Fatalf("after y1 delivered: %+v", st)
	}
	if err := s.RelayDiscard(ctx, conn.ID(), "y1"); err != nil {
		t.Fatal(err)
	}
	if o, ok, err := s.RelayOutcome(ctx, "KB", 1, "y1"); err != nil || !ok || o.State != "burned" || pool().StoredBits != 64 {
		t.Fatalf("y1 after burn: %+v %v %v, pool %+v", o, ok, err, pool())
	}
	if err := s.RelayDiscard(ctx, conn.ID(), "y2"); err != nil {
		t.Fatal(err)
	}
	if err := s.RelayDeliver(ctx, RelayUse{"KB", 1, "y2", 40, 80}, conn.ID(), rnd(8)); !errors.Is(err, ErrBlockExists) {
		t.Fatalf("late delivery of a burned block: %v", err)
	}
	// A block keys were carved from is never burned out of the pool.
	if _, err := s.IssueKeys(ctx, IssueRequest{RequestID: "q1", MasterSAE: "A", SlaveSAE: "C", Size: 64, KeyIDs: []string{"00000000-0000-4000-8000-000000000001"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.RelayDiscard(ctx, conn.ID(), "x1"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("burn of a used block: %v", err)
	}
}

// TestRelayUnconfirmed: the relay key of the link's last block is not
// available to relay with (the peer may not hold that block, and the
// sites' history check may drop it) until a later link block commits.
func TestRelayUnconfirmed(t *testing.T) {
	ctx := context.Background()
	s := openSingle(t, t.TempDir(), newKEK(t), io.Discard, nil)
	testenv.WaitFor(t, "cluster version 4", func() bool { return s.ClusterVersion() == MaxVersion })
	if err := s.AddBlock(ctx, Block{BlockID: "b1", LinkPeer: "KB", RelayBits: rnd(100), RelaySplit: 60}); err != nil {
		t.Fatal(err)
	}
	if st := s.RelayStreams("KB"); st[0].Available() != 0 || st[1].Available() != 0 || st[0].Unconfirmed != 60 || st[1].Unconfirmed != 40 {
		t.Fatalf("the last block's relay key counts as available: %+v", st)
	}
	if err := s.AddBlock(ctx, Block{BlockID: "b2", LinkPeer: "KB", AuthBits: rnd(8)}); err != nil {
		t.Fatal(err)
	}
	if st := s.RelayStreams("KB"); st[0].Available() != 60 || st[1].Available() != 40 {
		t.Fatalf("a later block does not confirm it: %+v", st)
	}
}
