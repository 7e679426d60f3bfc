package raftstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"testing"
)

func rnd(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestLinkState(t *testing.T) {
	ctx := context.Background()
	dir, kek := t.TempDir(), newKEK(t)
	s := openSingle(t, dir, kek, io.Discard, nil)
	conn := Connection{MasterSAE: "A", SlaveSAE: "B", KeySize: 256, MaxKeyPerRequest: 8}
	if err := s.RegisterConnection(ctx, conn); err != nil {
		t.Fatal(err)
	}
	pool := func() int64 {
		st, err := s.Connection(ctx, "A", "B")
		if err != nil {
			t.Fatal(err)
		}
		return st.StoredBits
	}
	a1, a2, a3 := rnd(100), rnd(50), rnd(10)
	steps := []struct {
		name string
		b    Block
		want error
	}{
		{"pool and pads", Block{ConnectionID: conn.ID(), BlockID: "blk1", Bits: rnd(64), LinkPeer: "KB", AuthBits: a1}, nil},
		{"pads only", Block{ConnectionID: conn.ID(), BlockID: "blk2", LinkPeer: "KB", AuthBits: a2}, nil},
		{"pads without link", Block{ConnectionID: conn.ID(), BlockID: "x", Bits: rnd(8), AuthBits: a2}, ErrInvalid},
		{"nothing", Block{ConnectionID: conn.ID(), BlockID: "y", LinkPeer: "KB"}, ErrInvalid},
		{"same ID again", Block{ConnectionID: conn.ID(), BlockID: "blk2", LinkPeer: "KB", AuthBits: a3}, ErrBlockExists},
	}
	for _, st := range steps {
		if err := s.AddBlock(ctx, st.b); !errors.Is(err, st.want) {
			t.Fatalf("%s: %v, want %v", st.name, err, st.want)
		}
	}
	ls, err := s.LinkState(ctx, "KB")
	if err != nil || ls.LastBlock != "blk2" || ls.PrevBlock != "blk1" || ls.StreamBytes != 150 || pool() != 64*8 {
		t.Fatalf("state %+v %v pool %d", ls, err, pool())
	}
	got, err := s.Pads(ctx, "KB", 90, 120)
	if err != nil || !bytes.Equal(got, append(bytes.Clone(a1[90:]), a2[:20]...)) {
		t.Fatalf("pads: %v", err)
	}
	if _, err := s.Pads(ctx, "KB", 140, 151); !errors.Is(err, ErrInsufficientKeys) {
		t.Fatalf("pads beyond stream: %v", err)
	}
	if err := s.ReservePads(ctx, "KB", 64); err != nil {
		t.Fatal(err)
	}
	if err := s.ReservePads(ctx, "KB", 10); err != nil {
		t.Fatal(err)
	}
	if ls, _ := s.LinkState(ctx, "KB"); ls.PadOffset != 64 {
		t.Fatalf("pad offset %d", ls.PadOffset)
	}
	// A block the peer never committed is dropped again.
	if err := s.AddBlock(ctx, Block{ConnectionID: conn.ID(), BlockID: "blk3", Bits: rnd(32), LinkPeer: "KB", AuthBits: a3}); err != nil {
		t.Fatal(err)
	}
	if err := s.DropLastBlock(ctx, "KB", "blk2"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("drop of a non-last block: %v", err)
	}
	if err := s.DropLastBlock(ctx, "KB", "blk3"); err != nil {
		t.Fatal(err)
	}
	if ls, _ := s.LinkState(ctx, "KB"); ls.LastBlock != "blk2" || ls.PrevBlock != "" || ls.StreamBytes != 150 || pool() != 64*8 {
		t.Fatalf("after drop %+v pool %d", ls, pool())
	}
	if err := s.AddBlock(ctx, Block{ConnectionID: conn.ID(), BlockID: "blk3", Bits: rnd(8), LinkPeer: "KB"}); !errors.Is(err, ErrBlockExists) {
		t.Fatalf("re-adding a dropped block: %v", err)
	}
	// A block whose bits were issued cannot be dropped.
	if err := s.AddBlock(ctx, Block{ConnectionID: conn.ID(), BlockID: "blk4", Bits: rnd(32), LinkPeer: "KB"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.IssueKeys(ctx, IssueRequest{RequestID: "r", MasterSAE: "A", SlaveSAE: "B", Size: 256, KeyIDs: []string{"k1", "k2", "k3"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DropLastBlock(ctx, "KB", "blk4"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("drop of an issued block: %v", err)
	}
	// Used pads are released (erased).
	if err := s.ReleasePads(ctx, "KB", 100); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pads(ctx, "KB", 0, 10); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("released pads: %v", err)
	}
	if err := s.ReleasePads(ctx, "KB", 1000); !errors.Is(err, ErrInvalid) {
		t.Fatalf("release beyond stream: %v", err)
	}
	want, err := s.Pads(ctx, "KB", 100, 150)
	if err != nil || !bytes.Equal(want, a2) {
		t.Fatalf("pads after release: %v", err)
	}
	if n := s.Stats()["fsm_blocks"]; n == "" {
		t.Fatal("no stats")
	}
	// Restart from disk: same link state and pads.
	_, d := s.Digest()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := openSingle(t, dir, kek, io.Discard, nil)
	defer s2.Shutdown(ctx)
	if _, d2 := s2.Digest(); d2 != d {
		t.Fatal("digest changed across restart")
	}
	ls2, err := s2.LinkState(ctx, "KB")
	if err != nil || ls2.LastBlock != "blk4" || ls2.PadsFrom != 100 {
		t.Fatalf("after restart %+v %v", ls2, err)
	}
	if got, err := s2.Pads(ctx, "KB", 100, 150); err != nil || !bytes.Equal(got, a2) {
		t.Fatalf("pads after restart: %v", err)
	}
}
