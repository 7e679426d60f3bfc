package raftstore

import (
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestReconcile: a restored state refuses every command that would serve,
// record or add key material of a connection with a peer it waits for,
// and reconcile burns the keys issued before the backup and moves the
// pool past the peer's end.
func TestReconcile(t *testing.T) {
	kek := make([]byte, KEKSize)
	_, _ = rand.Read(kek)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano()
	build := func(t *testing.T, link bool) (*fsm, func(cmdType, any) error) {
		f := newFSM()
		idx := uint64(0)
		apply := func(typ cmdType, body any) error {
			idx++
			r, _ := f.Apply(&raft.Log{Index: idx, Data: mustEncode(typ, body)}).(result)
			return r.err
		}
		must := func(typ cmdType, body any) {
			t.Helper()
			if err := apply(typ, body); err != nil {
				t.Fatalf("%s: %v", typ, err)
			}
		}
		wrapped, sealed, err := sealBlock(kek, goldenConn.ID(), "b1", make([]byte, 64))
		if err != nil {
			t.Fatal(err)
		}
		must(cmdRegister, &registerCmd{At: at, Conn: goldenConn})
		add := &addBlockCmd{At: at, ConnID: goldenConn.ID(), BlockID: "b1", Bytes: 64, Wrapped: wrapped, Sealed: sealed}
		if link {
			add.LinkPeer = "B"
		}
		must(cmdAddBlock, add)
		must(cmdIssue, &issueCmd{At: at, RequestID: "r1", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"}, Size: 64,
			KeyIDs: []string{"k1", "k2"}, IssuedAt: time.Unix(0, at).UTC()})
		b := &Backup{Header: BackupHeader{KMEID: "A"}, state: f.st.export()}
		st, err := importState(b.restoredState(), MaxVersion)
		if err != nil {
			t.Fatal(err)
		}
		f.st = st
		return f, apply
	}
	issue := &issueCmd{At: at, RequestID: "r2", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"}, Size: 64,
		KeyIDs: []string{"k3"}, IssuedAt: time.Unix(0, at).UTC()}
	for _, tc := range []struct {
		name string
		typ  cmdType
		body any
		want error
	}{
		{"issue", cmdIssue, issue, ErrNotReconciled},
		{"retried issue", cmdIssue, &issueCmd{At: at, RequestID: "r1", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"},
			Size: 64, KeyIDs: []string{"k1", "k2"}, IssuedAt: time.Unix(0, at).UTC()}, ErrNotReconciled},
		{"consume", cmdConsume, &consumeCmd{At: at, RequestID: "c1", Caller: "s", MasterSAE: "m", KeyIDs: []string{"k1"}}, ErrNotReconciled},
		{"record", cmdRecord, &recordCmd{At: at, Assignment: Assignment{RequestID: "x", MasterSAE: "m", SlaveSAE: "s",
			Slaves: []string{"s"}, Keys: []KeyRange{{KeyID: "k9", Offset: 128, Bits: 64}}}}, ErrNotReconciled},
		{"add block", cmdAddBlock, &addBlockCmd{At: at, ConnID: goldenConn.ID(), BlockID: "b2", Bytes: 8,
			Wrapped: make([]byte, wrappedLen), Sealed: make([]byte, sealedLen(8))}, ErrNotReconciled},
		{"import", cmdImport, &importCmd{At: at, Conn: goldenConn.ID(), Block: "b2"}, ErrNotReconciled},
		{"burn", cmdBurn, &burnCmd{At: at, KeyIDs: []string{"k9"}}, nil},
		{"reconcile another peer", cmdReconcile, &reconcileCmd{At: at, Peer: "C"}, nil},
		{"reconcile a foreign connection", cmdReconcile, &reconcileCmd{At: at, Peer: "B",
			Conns: []PoolPosition{{Conn: Connection{SourceKME: "A", TargetKME: "C", MasterSAE: "x", SlaveSAE: "y", KeySize: 64}, End: 8}}}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, apply := build(t, false)
			_, before := f.digest()
			err := apply(tc.typ, tc.body)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
			}
			if _, after := f.digest(); tc.want != nil && after != before {
				t.Fatal("a refused command changed the state")
			}
		})
	}

	t.Run("reconcile", func(t *testing.T) {
		f, apply := build(t, false)
		if err := apply(cmdReconcile, &reconcileCmd{At: at, Peer: "B", Conns: []PoolPosition{{Conn: goldenConn, Carve: 256, End: 1024}}}); err != nil {
			t.Fatal(err)
		}
		cs := f.st.conns[goldenConn.ID()]
		if len(f.st.restored) != 0 || cs.carve != 1024 || cs.end != 1024 || cs.live != 0 || cs.burned != 2 {
			t.Fatalf("after reconcile: restored %v carve %d end %d live %d burned %d", f.st.restored, cs.carve, cs.end, cs.live, cs.burned)
		}
		for _, id := range []string{"k1", "k2"} {
			if k, ok := f.st.keys[id]; ok && k.state != kBurned {
				t.Fatalf("key %s issued before the backup is %d after reconcile", id, k.state)
			}
		}
		if err := apply(cmdIssue, issue); !errors.Is(err, ErrInsufficientKeys) {
			t.Fatalf("issue after reconcile: %v, want insufficient keys (the pool starts at the peer's end)", err)
		}
	})
	t.Run("a QKD link is not reconciled", func(t *testing.T) {
		f, apply := build(t, true)
		if err := apply(cmdReconcile, &reconcileCmd{At: at, Peer: "B", Conns: []PoolPosition{{Conn: goldenConn, End: 1024}}}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("reconcile with a link: %v, want ErrInvalid", err)
		}
		if len(f.st.restored) != 1 {
			t.Fatalf("restored %v", f.st.restored)
		}
	})
}
