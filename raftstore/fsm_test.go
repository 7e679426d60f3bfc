package raftstore

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

var fConn = Connection{SourceKME: "A", TargetKME: "B", MasterSAE: "m", SlaveSAE: "s", KeySize: 64,
	MaxKeyCount: 100, MaxKeyPerRequest: 4, MaxSAEIDCount: 1, MinKeySize: 8, MaxKeySize: 512}

type fsmHarness struct {
	t     *testing.T
	f     *fsm
	kek   []byte
	idx   uint64
	at    int64
	plain map[string][]byte // block ID -> plaintext
}

func newHarness(t *testing.T) *fsmHarness {
	kek := make([]byte, 32)
	rand.Read(kek)
	return &fsmHarness{t: t, f: newFSM(), kek: kek, at: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(), plain: map[string][]byte{}}
}

func (h *fsmHarness) apply(t cmdType, body any) result {
	h.t.Helper()
	data, err := encodeCmd(t, body)
	if err != nil {
		h.t.Fatal(err)
	}
	h.idx++
	r, ok := h.f.Apply(&raft.Log{Index: h.idx, Data: data}).(result)
	if !ok {
		h.t.Fatalf("Apply returned %T", r)
	}
	return r
}

func (h *fsmHarness) block(conn, id string, n int) *addBlockCmd {
	p := make([]byte, n)
	rand.Read(p)
	h.plain[id] = p
	w, s, err := sealBlock(h.kek, conn, id, p)
	if err != nil {
		h.t.Fatal(err)
	}
	return &addBlockCmd{At: h.at, ConnID: conn, BlockID: id, Bytes: n, Wrapped: w, Sealed: s}
}

func (h *fsmHarness) open(outs []keyOut) [][]byte {
	h.t.Helper()
	var res [][]byte
	for _, ko := range outs {
		var b []byte
		for _, sg := range ko.segs {
			d := make([]byte, sg.n)
			if err := openRange(h.kek, ko.connID, sg.b, sg.off, sg.n, d); err != nil {
				h.t.Fatal(err)
			}
			b = append(b, d...)
		}
		res = append(res, b)
	}
	return res
}

func (h *fsmHarness) digest() string { _, d := h.f.digest(); return d }

// setup: connection m|s with two blocks of 20 and 12 bytes (256 bits).
func setup(t *testing.T) *fsmHarness {
	h := newHarness(t)
	for _, r := range []result{
		h.apply(cmdRegister, &registerCmd{At: h.at, Conn: fConn}),
		h.apply(cmdAddBlock, h.block(fConn.ID(), "b1", 20)),
		h.apply(cmdAddBlock, h.block(fConn.ID(), "b2", 12)),
	} {
		if r.err != nil {
			t.Fatal(r.err)
		}
	}
	return h
}

func issue(h *fsmHarness, req string, n, size int) (*issueCmd, result) {
	c := &issueCmd{At: h.at, RequestID: req, MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"}, Size: size, IssuedAt: time.Unix(1, 0).UTC()}
	for i := 0; i < n; i++ {
		c.KeyIDs = append(c.KeyIDs, fmt.Sprintf("%s-k%d", req, i))
	}
	return c, h.apply(cmdIssue, c)
}

func TestFSMCommandErrors(t *testing.T) {
	bad := fConn
	bad.KeySize = 7
	other := fConn
	other.MaxKeyCount = 5
	tests := []struct {
		name string
		t    cmdType
		body func(h *fsmHarness) any
		want error
	}{
		{"register invalid key size", cmdRegister, func(h *fsmHarness) any { return &registerCmd{Conn: bad} }, ErrInvalid},
		{"register master==slave", cmdRegister, func(h *fsmHarness) any {
			c := fConn
			c.SlaveSAE = "m"
			return &registerCmd{Conn: c}
		}, ErrInvalid},
		{"register conflicting", cmdRegister, func(h *fsmHarness) any { return &registerCmd{Conn: other} }, ErrConnectionExists},
		{"register identical is ok", cmdRegister, func(h *fsmHarness) any { return &registerCmd{Conn: fConn} }, nil},
		{"update unknown", cmdUpdate, func(h *fsmHarness) any {
			c := fConn
			c.MasterSAE = "x"
			return &registerCmd{Conn: c}
		}, ErrConnectionNotFound},
		{"delete unknown", cmdDelete, func(h *fsmHarness) any { return &deleteCmd{Master: "x", Slave: "s"} }, ErrConnectionNotFound},
		{"add block unknown conn", cmdAddBlock, func(h *fsmHarness) any { return h.block("x|y", "b9", 8) }, ErrConnectionNotFound},
		{"add block duplicate", cmdAddBlock, func(h *fsmHarness) any { return h.block(fConn.ID(), "b1", 8) }, ErrBlockExists},
		{"add block malformed", cmdAddBlock, func(h *fsmHarness) any {
			b := h.block(fConn.ID(), "b9", 8)
			b.Bytes = 9
			return b
		}, ErrInvalid},
		{"issue too much", cmdIssue, func(h *fsmHarness) any {
			c, _ := issueBody(4, 128)
			return c
		}, ErrInsufficientKeys},
		{"issue size not multiple of 8", cmdIssue, func(h *fsmHarness) any { c, _ := issueBody(1, 60); return c }, ErrInvalid},
		{"issue above max size", cmdIssue, func(h *fsmHarness) any { c, _ := issueBody(1, 1024); return c }, ErrInvalid},
		{"issue above max per request", cmdIssue, func(h *fsmHarness) any { c, _ := issueBody(5, 8); return c }, ErrInvalid},
		{"issue duplicate key IDs", cmdIssue, func(h *fsmHarness) any {
			c, _ := issueBody(2, 8)
			c.KeyIDs[1] = c.KeyIDs[0]
			return c
		}, ErrInvalid},
		{"issue too many slaves", cmdIssue, func(h *fsmHarness) any {
			c, _ := issueBody(1, 8)
			c.Slaves = []string{"s", "t", "u"}
			return c
		}, ErrInvalid},
		{"issue slave is master", cmdIssue, func(h *fsmHarness) any {
			c, _ := issueBody(1, 8)
			c.Slaves = []string{"s", "m"}
			return c
		}, ErrInvalid},
		{"issue unknown conn", cmdIssue, func(h *fsmHarness) any {
			c, _ := issueBody(1, 8)
			c.SlaveSAE, c.Slaves = "zz", []string{"zz"}
			return c
		}, ErrConnectionNotFound},
		{"record beyond pool", cmdRecord, func(h *fsmHarness) any {
			return &recordCmd{Assignment: Assignment{RequestID: "ra", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"},
				Keys: []KeyRange{{KeyID: "k", Offset: 0, Bits: 512}}}}
		}, ErrInsufficientKeys},
		{"record bad range", cmdRecord, func(h *fsmHarness) any {
			return &recordCmd{Assignment: Assignment{RequestID: "ra", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"},
				Keys: []KeyRange{{KeyID: "k", Offset: 3, Bits: 64}}}}
		}, ErrInvalid},
		{"record overlapping ranges", cmdRecord, func(h *fsmHarness) any {
			return &recordCmd{Assignment: Assignment{RequestID: "ra", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"},
				Keys: []KeyRange{{KeyID: "k1", Offset: 0, Bits: 64}, {KeyID: "k2", Offset: 32, Bits: 64}}}}
		}, ErrInvalid},
		{"record unknown conn", cmdRecord, func(h *fsmHarness) any {
			return &recordCmd{Assignment: Assignment{RequestID: "ra", MasterSAE: "m", SlaveSAE: "q", Slaves: []string{"q"},
				Keys: []KeyRange{{KeyID: "k1", Offset: 0, Bits: 64}}}}
		}, ErrConnectionNotFound},
		{"consume unknown", cmdConsume, func(h *fsmHarness) any {
			return &consumeCmd{RequestID: "c", Caller: "s", MasterSAE: "m", KeyIDs: []string{"nope"}}
		}, ErrKeyNotFound},
		{"consume duplicates", cmdConsume, func(h *fsmHarness) any {
			return &consumeCmd{RequestID: "c", Caller: "s", MasterSAE: "m", KeyIDs: []string{"a", "a"}}
		}, ErrInvalid},
		{"burn unknown is ignored", cmdBurn, func(h *fsmHarness) any { return &burnCmd{KeyIDs: []string{"nope"}} }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := setup(t)
			before := h.digest()
			r := h.apply(tc.t, tc.body(h))
			if tc.want == nil {
				if r.err != nil {
					t.Fatalf("err = %v", r.err)
				}
				return
			}
			if !errors.Is(r.err, tc.want) {
				t.Fatalf("err = %v, want %v", r.err, tc.want)
			}
			// A failed command changes no state beyond remembering its
			// request ID (for retries): compare pool and keys.
			if st := h.f.st.conns[fConn.ID()]; st != nil {
				if st.carve != 0 || st.end != 256 || len(h.f.st.keys) != 0 || st.added != 2 {
					t.Fatalf("state changed: carve %d end %d keys %d added %d", st.carve, st.end, len(h.f.st.keys), st.added)
				}
			}
			if after := h.digest(); after != before {
				t.Fatal("digest changed by a failed command")
			}
		})
	}
}

func issueBody(n, size int) (*issueCmd, error) {
	c := &issueCmd{RequestID: "ri", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"}, Size: size}
	for i := 0; i < n; i++ {
		c.KeyIDs = append(c.KeyIDs, fmt.Sprint("ki", i))
	}
	return c, nil
}

// TestFSMFailedCommandDigest: a failed command leaves the digest unchanged;
// its retry is evaluated afresh and may succeed once the pool was filled.
func TestFSMFailedCommandDigest(t *testing.T) {
	h := setup(t)
	_, r := issue(h, "big", 4, 128)
	if !errors.Is(r.err, ErrInsufficientKeys) {
		t.Fatal(r.err)
	}
	d1 := h.digest()
	_, r = issue(h, "big", 4, 128)
	if !errors.Is(r.err, ErrInsufficientKeys) || h.digest() != d1 {
		t.Fatalf("retry: %v, digest changed %v", r.err, h.digest() != d1)
	}
	h.apply(cmdAddBlock, h.block(fConn.ID(), "b3", 64))
	if _, r = issue(h, "big", 4, 128); r.err != nil {
		t.Fatalf("retry after refill: %v", r.err)
	}
	d2 := h.digest()
	if _, r = issue(h, "big", 4, 128); r.err != nil || h.digest() != d2 {
		t.Fatalf("retry of a success: %v, applied twice %v", r.err, h.digest() != d2)
	}
}

func TestFSMIssueRecordConsume(t *testing.T) {
	m := setup(t) // master site
	s := newHarness(t)
	s.kek = m.kek
	// The slave site gets the same blocks (same ciphertext, as if imported).
	s.apply(cmdRegister, &registerCmd{Conn: fConn})
	for _, id := range []string{"b1", "b2"} {
		m.f.mu.RLock()
		var b *blockRec
		for _, x := range m.f.st.conns[fConn.ID()].blocks {
			if x.id == id {
				b = x
			}
		}
		m.f.mu.RUnlock()
		if r := s.apply(cmdAddBlock, &addBlockCmd{ConnID: fConn.ID(), BlockID: id, Bytes: b.bytes, Wrapped: b.wrapped, Sealed: b.sealed}); r.err != nil {
			t.Fatal(r.err)
		}
	}
	stream := append(append([]byte(nil), m.plain["b1"]...), m.plain["b2"]...)

	_, r1 := issue(m, "r1", 2, 64) // bytes 0..16
	if r1.err != nil {
		t.Fatal(r1.err)
	}
	_, r2 := issue(m, "r2", 1, 64) // bytes 16..24, straddles b1/b2: burned below
	if r2.err != nil {
		t.Fatal(r2.err)
	}
	_, r3 := issue(m, "r3", 1, 64) // bytes 24..32
	if r3.err != nil {
		t.Fatal(r3.err)
	}
	keys := m.open(append(append(r1.keys, r2.keys...), r3.keys...))
	for i, k := range keys {
		if !bytes.Equal(k, stream[i*8:(i+1)*8]) {
			t.Fatalf("key %d bits wrong", i)
		}
	}
	if _, r := issue(m, "r4", 1, 64); !errors.Is(r.err, ErrInsufficientKeys) {
		t.Fatalf("empty pool: %v", r.err)
	}
	// Relay r2 failed: burned at the master.
	m.apply(cmdBurn, &burnCmd{KeyIDs: []string{"r2-k0"}})
	if st := m.f.st.conns[fConn.ID()].status(); st.BurnedKeys != 1 || st.IssuedKeys != 3 || st.StoredBits != 0 {
		t.Fatalf("master status %+v", st)
	}
	if _, r := issue(m, "r2", 1, 64); !errors.Is(r.err, ErrKeyNotFound) {
		t.Fatalf("retry of burned issue: %v", r.err)
	}
	// Slave site records r1 and r3; r2's range is burned there too.
	if r := s.apply(cmdRecord, &recordCmd{Assignment: *r1.assignment}); r.err != nil {
		t.Fatal(r.err)
	}
	if r := s.apply(cmdRecord, &recordCmd{Assignment: *r3.assignment}); r.err != nil {
		t.Fatal(r.err)
	}
	st := s.f.st.conns[fConn.ID()].status()
	if st.BurnedKeys != 0 || st.IssuedKeys != 3 || st.StoredBits != 0 || len(s.f.st.conns[fConn.ID()].holes) != 1 {
		t.Fatalf("slave status %+v holes %v", st, s.f.st.conns[fConn.ID()].holes)
	}
	// r2's relay arrives late (out of order): it fills the hole.
	if r := s.apply(cmdRecord, &recordCmd{At: s.at, Assignment: *r2.assignment}); r.err != nil {
		t.Fatalf("late record: %v", r.err)
	}
	if h := s.f.st.conns[fConn.ID()].holes; len(h) != 0 {
		t.Fatalf("holes left: %v", h)
	}
	dup := *r2.assignment
	dup.RequestID, dup.Keys = "dup", []KeyRange{{KeyID: "other", Offset: dup.Keys[0].Offset, Bits: 64}}
	if r := s.apply(cmdRecord, &recordCmd{At: s.at, Assignment: dup}); !errors.Is(r.err, ErrInvalid) {
		t.Fatalf("second assignment of a range: %v", r.err)
	}
	// The master burned r2: so does the slave site when told.
	s.apply(cmdBurn, &burnCmd{At: s.at, KeyIDs: []string{"r2-k0"}})
	if st := s.f.st.conns[fConn.ID()].status(); st.BurnedKeys != 1 || st.IssuedKeys != 3 {
		t.Fatalf("slave status %+v", st)
	}
	// Not authorized: nothing changes.
	d := s.digest()
	if r := s.apply(cmdConsume, &consumeCmd{RequestID: "x", Caller: "evil", MasterSAE: "m", KeyIDs: []string{"r1-k0"}}); !errors.Is(r.err, ErrNotAuthorized) {
		t.Fatal(r.err)
	}
	if r := s.apply(cmdConsume, &consumeCmd{RequestID: "y", Caller: "s", MasterSAE: "m", KeyIDs: []string{"r1-k0", "nope"}}); !errors.Is(r.err, ErrKeyNotFound) {
		t.Fatal(r.err)
	}
	if s.f.st.keys["r1-k0"].state != kIssued {
		t.Fatal("refused consume changed a key")
	}
	_ = d
	r := s.apply(cmdConsume, &consumeCmd{RequestID: "c1", Caller: "s", MasterSAE: "m", KeyIDs: []string{"r3-k0", "r1-k1"}})
	if r.err != nil {
		t.Fatal(r.err)
	}
	got := s.open(r.keys)
	if !bytes.Equal(got[0], keys[3]) || !bytes.Equal(got[1], keys[1]) {
		t.Fatal("slave got different bits")
	}
	if st := s.f.st.conns[fConn.ID()].status(); st.ErasedKeys != 2 || st.IssuedKeys != 1 {
		t.Fatalf("after consume %+v", st)
	}
	if r := s.apply(cmdConsume, &consumeCmd{RequestID: "c2", Caller: "s", MasterSAE: "m", KeyIDs: []string{"r3-k0"}}); !errors.Is(r.err, ErrKeyNotFound) {
		t.Fatalf("second fetch: %v", r.err)
	}
	// Batch: one result per member.
	b1, _ := encodeCmd(cmdBurn, &burnCmd{KeyIDs: []string{"r1-k0"}})
	b2, _ := encodeCmd(cmdConsume, &consumeCmd{RequestID: "c3", Caller: "s", MasterSAE: "m", KeyIDs: []string{"r1-k0"}})
	bd := encodeBatch([][]byte{b1, b2})
	s.idx++
	br := s.f.Apply(&raft.Log{Index: s.idx, Data: bd}).([]result)
	if len(br) != 2 || br[0].err != nil || !errors.Is(br[1].err, ErrKeyNotFound) {
		t.Fatalf("batch results %+v", br)
	}

	// Request-table aging releases pinned keys and drops dead blocks.
	s.at += int64(3 * reqTableAge)
	s.apply(cmdBurn, &burnCmd{At: s.at})
	if n := len(s.f.st.conns[fConn.ID()].blocks); n != 0 {
		t.Fatalf("%d blocks left after every key died", n)
	}
	m.at += int64(3 * reqTableAge)
	m.apply(cmdBurn, &burnCmd{At: m.at})
	if st := m.f.st.conns[fConn.ID()].status(); st.ErasedKeys != 3 || st.IssuedKeys != 0 || len(m.f.st.keys) != 0 {
		t.Fatalf("master after retry window %+v keys %d", st, len(m.f.st.keys))
	}
	if r := m.apply(cmdAddBlock, m.block(fConn.ID(), "b1", 8)); !errors.Is(r.err, ErrBlockExists) {
		t.Fatalf("re-adding a dropped block: %v", r.err)
	}
}

func TestFSMMulticastAndDelete(t *testing.T) {
	h := setup(t)
	c := fConn
	c.MaxSAEIDCount = 2
	h.apply(cmdUpdate, &registerCmd{Conn: c})
	rec := &recordCmd{Assignment: Assignment{RequestID: "a1", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s", "t"},
		Keys: []KeyRange{{KeyID: "k1", Offset: 64, Bits: 64}}}}
	rec.At = h.at
	if r := h.apply(cmdRecord, rec); r.err != nil {
		t.Fatal(r.err)
	}
	if st := h.f.st.conns[fConn.ID()].status(); st.BurnedKeys != 0 || len(h.f.st.conns[fConn.ID()].holes) != 1 {
		t.Fatalf("skipped range: %+v", st)
	}
	for i, caller := range []string{"s", "t"} {
		r := h.apply(cmdConsume, &consumeCmd{At: h.at, RequestID: caller, Caller: caller, MasterSAE: "m", KeyIDs: []string{"k1"}})
		if r.err != nil {
			t.Fatal(r.err)
		}
		if !bytes.Equal(h.open(r.keys)[0], h.plain["b1"][8:16]) {
			t.Fatal("wrong bits")
		}
		want := []keyState{kIssued, kErased}[i]
		if h.f.st.keys["k1"].state != want {
			t.Fatalf("after %s: state %d", caller, h.f.st.keys["k1"].state)
		}
	}
	// Nobody filled the skipped range in time: it is burned and its
	// block dropped once the key's retry window is over too.
	h.at += int64(3 * reqTableAge)
	h.apply(cmdBurn, &burnCmd{At: h.at})
	cs := h.f.st.conns[fConn.ID()]
	if st := cs.status(); st.BurnedKeys != 1 || len(cs.holes) != 0 || st.StoredBits != 128 {
		t.Fatalf("after aging: %+v holes %v blocks %d", st, cs.holes, len(cs.blocks))
	}
	if r := h.apply(cmdDelete, &deleteCmd{Master: "m", Slave: "s"}); r.err != nil {
		t.Fatal(r.err)
	}
	if len(h.f.st.conns) != 0 || len(h.f.st.keys) != 0 {
		t.Fatal("delete left state")
	}
}

func TestFSMSnapshotRestore(t *testing.T) {
	h := setup(t)
	issue(h, "r1", 2, 64)
	h.apply(cmdRecord, &recordCmd{Assignment: Assignment{RequestID: "zz", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"},
		Keys: []KeyRange{{KeyID: "x1", Offset: 192, Bits: 64}}}})
	_, want := h.f.digest()
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	f2 := newFSM()
	if err := f2.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if _, got := f2.digest(); got != want {
		t.Fatal("restored digest differs")
	}
	// Restored state behaves the same: retry of r1 returns the same keys.
	h2 := &fsmHarness{t: t, f: f2, kek: h.kek, idx: 100, at: h.at}
	_, a := issue(h, "r1", 2, 64)
	_, b := issue(h2, "r1", 2, 64)
	if !bytes.Equal(h.open(a.keys)[1], h2.open(b.keys)[1]) {
		t.Fatal("restored state returns different keys")
	}
	if err := f2.Restore(io.NopCloser(bytes.NewReader([]byte(`{"version":1,"bogus":1}`)))); err == nil {
		t.Fatal("restore accepted unknown field")
	}
}

func TestDecodeStrict(t *testing.T) {
	good, _ := encodeCmd(cmdBurn, &burnCmd{KeyIDs: []string{"a"}})
	for name, data := range map[string][]byte{
		"empty":    nil,
		"unknown":  {99, 1, '{', '}'},
		"version":  {byte(cmdBurn), 9, '{', '}'},
		"field":    append([]byte{byte(cmdBurn), 1}, []byte(`{"key_ids":[],"x":1}`)...),
		"trailing": append(append([]byte(nil), good...), []byte(`{}`)...),
		"type":     append([]byte{byte(cmdBurn), 1}, []byte(`{"key_ids":"a"}`)...),
		"batch0":   {byte(cmdBatch), 1, 0},
		"batchlen": {byte(cmdBatch), 1, 1, 9, byte(cmdBurn), 1},
		"batchtr":  append(encodeBatch([][]byte{good}), 0),
	} {
		if _, _, err := decodeCmd(data); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	if _, _, err := decodeCmd(good); err != nil {
		t.Fatal(err)
	}
}

// TestUnknownCommand: an entry this binary cannot apply stops the FSM with
// ErrUpgradeRequired instead of panicking: nothing of it (or of its batch)
// applies, later entries are refused, no snapshot is taken, and restoring
// a snapshot it can read brings it back.
func TestUnknownCommand(t *testing.T) {
	burn, _ := encodeCmd(cmdBurn, &burnCmd{At: 5, KeyIDs: []string{"a"}})
	imp, _ := encodeCmd(cmdImport, &importCmd{At: 5, Conn: fConn.ID(), Block: "b1"})
	raise, _ := encodeCmd(cmdClusterVersion, &clusterVersionCmd{At: 5, Version: 2})
	for _, tc := range []struct {
		name string
		max  uint8
		data []byte
	}{
		{"unknown type", MaxVersion, []byte{99, 1, '{', '}'}},
		{"unknown version", MaxVersion, append([]byte{byte(cmdBurn), MaxVersion + 1}, burn[2:]...)},
		{"malformed body", MaxVersion, append([]byte{byte(cmdBurn), 1}, []byte(`{"key_ids":"a"}`)...)},
		{"command of a newer version", 1, imp},
		{"raise beyond this binary", 1, raise},
		{"batch with a newer member", 1, encodeBatch([][]byte{burn, imp})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := setup(t)
			h.f.maxVersion = tc.max
			before := h.digest()
			h.idx++
			r, ok := h.f.Apply(&raft.Log{Index: h.idx, Data: tc.data}).(result)
			if !ok || !errors.Is(r.err, ErrUpgradeRequired) {
				t.Fatalf("Apply = %v, want ErrUpgradeRequired", r.err)
			}
			if h.digest() != before {
				t.Fatal("a refused entry changed the state")
			}
			h.idx++
			if r, ok := h.f.Apply(&raft.Log{Index: h.idx, Data: burn}).(result); !ok || !errors.Is(r.err, ErrUpgradeRequired) {
				t.Fatalf("entry after the unknown one: %v", r.err)
			}
			if _, err := h.f.Snapshot(); !errors.Is(err, ErrUpgradeRequired) {
				t.Fatalf("Snapshot = %v, want ErrUpgradeRequired", err)
			}
			good := setup(t)
			snap, err := good.f.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			sink := &memSink{}
			if err := snap.Persist(sink); err != nil {
				t.Fatal(err)
			}
			if err := h.f.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
				t.Fatal(err)
			}
			if h.f.brokenErr() != nil {
				t.Fatal("still stopped after restoring a snapshot")
			}
		})
	}
}

type memSink struct{ bytes.Buffer }

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }

// TestFSMHoleKeepsBlock: a block wholly inside a hole stays until the late
// assignment arrives, and the late key reads the right bits.
func TestFSMHoleKeepsBlock(t *testing.T) {
	h := setup(t)
	rec := func(req, kid string, off int64) result {
		return h.apply(cmdRecord, &recordCmd{At: h.at, Assignment: Assignment{RequestID: req, MasterSAE: "m", SlaveSAE: "s",
			Slaves: []string{"s"}, Keys: []KeyRange{{KeyID: kid, Offset: off, Bits: 64}}}})
	}
	if r := rec("a2", "late-not", 160); r.err != nil {
		t.Fatal(r.err)
	}
	if n := len(h.f.st.conns[fConn.ID()].blocks); n != 2 {
		t.Fatalf("block inside a hole dropped: %d blocks", n)
	}
	if r := rec("a1", "late", 0); r.err != nil {
		t.Fatal(r.err)
	}
	r := h.apply(cmdConsume, &consumeCmd{At: h.at, RequestID: "c", Caller: "s", MasterSAE: "m", KeyIDs: []string{"late", "late-not"}})
	if r.err != nil {
		t.Fatal(r.err)
	}
	got := h.open(r.keys)
	if !bytes.Equal(got[0], h.plain["b1"][:8]) || !bytes.Equal(got[1], h.plain["b2"][:8]) {
		t.Fatal("wrong bits")
	}
	if r := rec("a3", "x", 8); !errors.Is(r.err, ErrInvalid) {
		t.Fatalf("overlapping late record: %v", r.err)
	}
}
