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
	r1, r2 := rnd(100), rnd(60)
	for _, b := range []Block{
		{ConnectionID: conn.ID(), BlockID: "blk1", Bits: rnd(32), LinkPeer: "KB", AuthBits: rnd(16), RelayBits: r1},
		{ConnectionID: conn.ID(), BlockID: "blk2", LinkPeer: "KB", RelayBits: r2},
	} {
		if err := s.AddBlock(ctx, b); err != nil {
			t.Fatalf("add %s: %v", b.BlockID, err)
		}
	}
	if err := s.AddBlock(ctx, Block{ConnectionID: conn.ID(), BlockID: "x", Bits: rnd(8), RelayBits: rnd(8)}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("relay bits without a link peer: %v", err)
	}
	stream := append(bytes.Clone(r1), r2...)
	got, err := s.RelayKey(ctx, "KB", 90, 120)
	if err != nil || !bytes.Equal(got, stream[90:120]) {
		t.Fatalf("relay key across blocks: %v", err)
	}
	delivered := rnd(24)
	type op struct {
		name string
		kind string // send, deliver, burn
		u    RelayUse
		want error
	}
	ops := []op{
		{"send", "send", RelayUse{"KB", "r1", 0, 40}, nil},
		{"retry is the first outcome", "send", RelayUse{"KB", "r1", 0, 40}, nil},
		{"same block, other range", "send", RelayUse{"KB", "r1", 40, 80}, ErrInvalid},
		{"overlaps used key", "send", RelayUse{"KB", "r2", 30, 50}, ErrInvalid},
		{"backwards", "send", RelayUse{"KB", "r2", 0, 10}, ErrInvalid},
		{"beyond the stream", "send", RelayUse{"KB", "r2", 150, 161}, ErrInsufficientKeys},
		{"empty range", "send", RelayUse{"KB", "r2", 50, 50}, ErrInvalid},
		{"no link", "send", RelayUse{"KC", "r2", 0, 8}, ErrInsufficientKeys},
		{"skip ahead", "deliver", RelayUse{"KB", "r2", 50, 74}, nil},
		{"deliver retry", "deliver", RelayUse{"KB", "r2", 50, 74}, nil},
		{"sent block delivered", "deliver", RelayUse{"KB", "r1", 0, 40}, ErrInvalid},
		{"burn unknown block", "burn", RelayUse{"KB", "r3", 74, 90}, nil},
		{"burned block never delivered", "deliver", RelayUse{"KB", "r3", 74, 90}, ErrKeyNotFound},
		{"burn a delivered block", "burn", RelayUse{"KB", "r2", 50, 74}, nil},
		{"burn again", "burn", RelayUse{"KB", "r2", 50, 74}, nil},
		{"below burned range", "send", RelayUse{"KB", "r4", 80, 100}, ErrInvalid},
		{"rest of the stream", "send", RelayUse{"KB", "r4", 90, 160}, nil},
	}
	var used [][2]uint64
	for _, o := range ops {
		var err error
		switch o.kind {
		case "send":
			err = s.RelaySend(ctx, o.u)
		case "deliver":
			err = s.RelayDeliver(ctx, o.u, conn.ID(), delivered)
		case "burn":
			err = s.RelayBurn(ctx, o.u)
		}
		if !errors.Is(err, o.want) {
			t.Fatalf("%s: %v, want %v", o.name, err, o.want)
		}
		if err == nil {
			used = append(used, [2]uint64{o.u.From, o.u.To})
		}
		ls, err := s.LinkState(ctx, "KB")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RelayKey(ctx, "KB", ls.RelayUsed-1, ls.RelayUsed); ls.RelayUsed > 0 && !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("%s: consumed relay key still readable: %v", o.name, err)
		}
	}
	// Every successful consumption is either a retry of the same block's
	// range or disjoint from all others: no byte is used for two blocks.
	for i, a := range used {
		for _, b := range used[i+1:] {
			if a != b && a[0] < b[1] && b[0] < a[1] {
				t.Fatalf("relay key ranges %v and %v overlap", a, b)
			}
		}
	}
	st, err := s.Connection(ctx, "A", "B")
	if err != nil || st.StoredBits != 32*8 {
		t.Fatalf("pool after the burned delivery: %d bits, %v (want the link block only)", st.StoredBits, err)
	}
	if o, ok, err := s.RelayOutcome(ctx, "KB", "r2"); err != nil || !ok || o.State != "burned" {
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
	if err := s.RelaySend(ctx, RelayUse{"KB", "r1", 0, 40}); err != nil {
		t.Fatalf("retry after restart: %v", err)
	}
	if err := s.RelaySend(ctx, RelayUse{"KB", "r5", 100, 120}); !errors.Is(err, ErrInvalid) {
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
	for i, n := range []int{40, 30} {
		b := Block{ConnectionID: conn.ID(), BlockID: []string{"b1", "b2"}[i], Bits: rnd(16), LinkPeer: "KB", RelayBits: rnd(n)}
		if err := s.AddBlock(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RelaySend(ctx, RelayUse{"KB", "r1", 0, 40}); err != nil {
		t.Fatal(err)
	}
	if err := s.DropLastBlock(ctx, "KB", "b2"); err != nil {
		t.Fatalf("drop a block with unused relay key: %v", err)
	}
	ls, err := s.LinkState(ctx, "KB")
	if err != nil || ls.RelayBytes != 40 || ls.RelayUsed != 40 || !ls.RelayEnabled {
		t.Fatalf("after drop: %+v %v", ls, err)
	}
	if err := s.RelaySend(ctx, RelayUse{"KB", "r2", 40, 41}); !errors.Is(err, ErrInsufficientKeys) {
		t.Fatalf("relay key of the dropped block: %v", err)
	}
}
