package raftstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
	"qkdkms/raftstore/storetest"
)

var testConn = raftstore.Connection{
	SourceKME: "kmeA", TargetKME: "kmeB", MasterSAE: "saeA", SlaveSAE: "saeB",
	KeySize: 256, MaxKeyCount: 100000, MaxKeyPerRequest: 64, MaxSAEIDCount: 2, MinKeySize: 64, MaxKeySize: 1024,
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func randBlock(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func ids(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = uuid.NewString()
	}
	return out
}

// withLeader retries fn on the current leader while it reports a leadership
// change (what node's forwarding does). Every fn here is idempotent (fixed
// request or block IDs), so an outcome-unknown answer is retried too.
func withLeader(t *testing.T, c *storetest.Cluster, fn func(s *raftstore.Store) error) error {
	t.Helper()
	var err error
	if werr := testenv.Until(context.Background(), "a leader that takes the call", func() bool {
		err = fn(c.Leader(t))
		return err == nil || !(errors.Is(err, raftstore.ErrNotLeader) || errors.Is(err, raftstore.ErrNoLeader) ||
			errors.Is(err, raftstore.ErrOutcomeUnknown) || errors.Is(err, raftstore.ErrClosed))
	}); werr != nil {
		return fmt.Errorf("%w (last error: %w)", werr, err)
	}
	return err
}

// TestTwoSitesRoundTrip: a master site issues, the slave site records the
// assignment and the slave consumes: identical bytes, once.
func TestTwoSitesRoundTrip(t *testing.T) {
	ctx := ctxT(t)
	a := storetest.MakeCluster(t, 3)
	b := storetest.MakeCluster(t, 1)
	la, lb := a.Leader(t), b.Leader(t)
	for _, s := range []*raftstore.Store{la, lb} {
		if err := s.RegisterConnection(ctx, testConn); err != nil {
			t.Fatal(err)
		}
	}
	blocks := [][]byte{randBlock(t, 100), randBlock(t, 3000)}
	var stream []byte
	for i, bl := range blocks {
		stream = append(stream, bl...)
		for _, s := range []*raftstore.Store{lb, la} {
			if err := s.AddBlock(ctx, raftstore.Block{ConnectionID: testConn.ID(), BlockID: fmt.Sprint("blk", i), Bits: bl}); err != nil {
				t.Fatal(err)
			}
		}
	}
	kids := ids(5)
	iss, err := la.IssueKeys(ctx, raftstore.IssueRequest{RequestID: "r1", MasterSAE: "saeA", SlaveSAE: "saeB",
		Slaves: []string{"saeB", "saeC"}, Size: 256, KeyIDs: kids})
	if err != nil {
		t.Fatal(err)
	}
	if len(iss.Keys) != 5 || len(iss.Assignment.Keys) != 5 {
		t.Fatalf("issued %d keys, assignment %d", len(iss.Keys), len(iss.Assignment.Keys))
	}
	for i, k := range iss.Keys {
		if k.KeyID != kids[i] || !bytes.Equal(k.Bits, stream[i*32:(i+1)*32]) {
			t.Fatalf("key %d: wrong id or bits", i)
		}
	}
	// The first key straddles the two blocks (100 bytes = 3 keys + 4 bytes).
	if err := lb.RecordAssignment(ctx, iss.Assignment); err != nil {
		t.Fatal(err)
	}
	if err := lb.RecordAssignment(ctx, iss.Assignment); err != nil {
		t.Fatalf("retried record: %v", err)
	}
	// Wrong caller, wrong master: refused, nothing changes.
	_, err = lb.ConsumeKeys(ctx, raftstore.ConsumeRequest{RequestID: "c0", Caller: "mallory", MasterSAE: "saeA", KeyIDs: kids[:1]})
	if !errors.Is(err, raftstore.ErrNotAuthorized) {
		t.Fatalf("mallory: %v", err)
	}
	_, err = lb.ConsumeKeys(ctx, raftstore.ConsumeRequest{RequestID: "c0b", Caller: "saeB", MasterSAE: "saeX", KeyIDs: kids[:1]})
	if !errors.Is(err, raftstore.ErrNotAuthorized) {
		t.Fatalf("wrong master: %v", err)
	}
	got, err := lb.ConsumeKeys(ctx, raftstore.ConsumeRequest{RequestID: "c1", Caller: "saeB", MasterSAE: "saeA", KeyIDs: kids})
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if !bytes.Equal(got[i].Bits, iss.Keys[i].Bits) {
			t.Fatalf("key %d differs between sites", i)
		}
	}
	// Retry with the same request ID returns the same keys.
	again, err := lb.ConsumeKeys(ctx, raftstore.ConsumeRequest{RequestID: "c1", Caller: "saeB", MasterSAE: "saeA", KeyIDs: kids})
	if err != nil || !bytes.Equal(again[4].Bits, got[4].Bits) {
		t.Fatalf("retried consume: %v", err)
	}
	// A new fetch by the same slave finds no key (it fetched its share);
	// saeC may still fetch.
	if _, err := lb.ConsumeKeys(ctx, raftstore.ConsumeRequest{RequestID: "c2", Caller: "saeB", MasterSAE: "saeA", KeyIDs: kids[:1]}); !errors.Is(err, raftstore.ErrKeyNotFound) {
		t.Fatalf("second fetch: %v", err)
	}
	if _, err := lb.ConsumeKeys(ctx, raftstore.ConsumeRequest{RequestID: "c3", Caller: "saeC", MasterSAE: "saeA", KeyIDs: kids}); err != nil {
		t.Fatal(err)
	}
	st, err := lb.Connection(ctx, "saeA", "saeB")
	if err != nil {
		t.Fatal(err)
	}
	if st.ErasedKeys != 5 || st.IssuedKeys != 0 || st.StoredBits != int64(len(stream)*8-5*256) {
		t.Fatalf("slave status %+v", st)
	}
	if _, err := lb.ConsumeKeys(ctx, raftstore.ConsumeRequest{RequestID: "c4", Caller: "saeC", MasterSAE: "saeA", KeyIDs: kids[:1]}); !errors.Is(err, raftstore.ErrKeyNotFound) {
		t.Fatalf("erased key: %v", err)
	}
	// Retried issue returns the same keys.
	iss2, err := la.IssueKeys(ctx, raftstore.IssueRequest{RequestID: "r1", MasterSAE: "saeA", SlaveSAE: "saeB",
		Slaves: []string{"saeB", "saeC"}, Size: 256, KeyIDs: kids})
	if err != nil || !bytes.Equal(iss2.Keys[2].Bits, iss.Keys[2].Bits) {
		t.Fatalf("retried issue: %v", err)
	}
	a.WaitDigestsEqual(t)
}

// TestFollowerWritesRefused: writes and reads on a follower return
// ErrNotLeader and change nothing.
func TestFollowerWritesRefused(t *testing.T) {
	ctx := ctxT(t)
	c := storetest.MakeCluster(t, 3)
	d0 := c.WaitDigestsEqual(t)
	for _, f := range c.Followers() {
		if err := f.RegisterConnection(ctx, testConn); !errors.Is(err, raftstore.ErrNotLeader) {
			t.Fatalf("follower write: %v", err)
		}
		if err := f.AddBlock(ctx, raftstore.Block{ConnectionID: testConn.ID(), BlockID: "x", Bits: []byte{1}}); !errors.Is(err, raftstore.ErrNotLeader) {
			t.Fatalf("follower add: %v", err)
		}
		if _, err := f.Connections(ctx); !errors.Is(err, raftstore.ErrNotLeader) {
			t.Fatalf("follower read: %v", err)
		}
	}
	if d := c.WaitDigestsEqual(t); d != d0 {
		t.Fatal("state changed")
	}
}

// issuer keeps issuing keys through whichever node leads and records every
// key ID and key value handed out.
type issuer struct {
	mu    sync.Mutex
	ids   map[string]bool
	bits  map[string]bool
	reqs  map[string]bool
	fails int
}

func (is *issuer) issue(ctx context.Context, t *testing.T, s *raftstore.Store, n int) error {
	return is.issueReq(ctx, t, s, uuid.NewString(), ids(n))
}

// issueReq issues with a fixed request ID, so callers can retry it.
func (is *issuer) issueReq(ctx context.Context, t *testing.T, s *raftstore.Store, req string, kids []string) error {
	iss, err := s.IssueKeys(ctx, raftstore.IssueRequest{RequestID: req, MasterSAE: "saeA", SlaveSAE: "saeB",
		Slaves: []string{"saeB"}, Size: 256, KeyIDs: kids})
	is.mu.Lock()
	defer is.mu.Unlock()
	if err != nil {
		is.fails++
		return err
	}
	if is.reqs[req] {
		return nil // a retry returned the first result again
	}
	is.reqs[req] = true
	for _, k := range iss.Keys {
		if is.ids[k.KeyID] || is.bits[string(k.Bits)] {
			t.Errorf("key %s issued twice", k.KeyID)
		}
		is.ids[k.KeyID] = true
		is.bits[string(k.Bits)] = true
	}
	return nil
}

// TestFailover: leader loss, partition of the leader (minority writes
// fail and apply nothing), rejoin, snapshot install on a lagging follower;
// digests equal and no key issued twice.
func TestFailover(t *testing.T) {
	ctx := ctxT(t)
	c := storetest.MakeCluster(t, 3, storetest.WithConfig(func(i int, cfg *raftstore.Config) {
		cfg.SnapshotThreshold = 20
		cfg.TrailingLogs = 5
		cfg.SnapshotInterval = 100 * time.Millisecond
	}))
	l := c.Leader(t)
	if err := l.RegisterConnection(ctx, testConn); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		if err := withLeader(t, c, func(s *raftstore.Store) error {
			return s.AddBlock(ctx, raftstore.Block{ConnectionID: testConn.ID(), BlockID: fmt.Sprint("b", i), Bits: randBlock(t, 1024)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	is := &issuer{ids: map[string]bool{}, bits: map[string]bool{}, reqs: map[string]bool{}}
	round := func(n int) {
		for i := 0; i < n; i++ {
			if err := withLeader(t, c, func(s *raftstore.Store) error { return is.issue(ctx, t, s, 4) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	round(10)

	// 1. Leader loss while four callers issue concurrently; each retries
	// its request (same ID) on whichever node leads until it succeeds.
	old := c.Leader(t)
	oldID, _ := old.Leader()
	issued := func() int { is.mu.Lock(); defer is.mu.Unlock(); return len(is.reqs) }
	before := issued()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				req, kids := uuid.NewString(), ids(2)
				if err := withLeader(t, c, func(s *raftstore.Store) error { return is.issueReq(ctx, t, s, req, kids) }); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	testenv.WaitFor(t, "the concurrent callers' first keys", func() bool { return issued() > before })
	c.Crash(oldID)
	wg.Wait()
	round(10)
	c.Restart(t, oldID)
	round(5)
	c.WaitDigestsEqual(t)

	// 2. Partition the leader: its writes fail, nothing is applied there.
	l = c.Leader(t)
	lid, _ := l.Leader()
	restores0 := l.Stats()["fsm_restores"]
	c.Partition(lid)
	idx0, _ := l.Digest()
	err := is.issue(ctx, t, l, 4)
	// Either refused before Raft took it (not-leader) or appended to the
	// isolated leader's log and lost with its leadership (outcome unknown).
	if !errors.Is(err, raftstore.ErrNotLeader) && !errors.Is(err, raftstore.ErrNoLeader) && !errors.Is(err, raftstore.ErrOutcomeUnknown) {
		t.Fatalf("write on partitioned leader: %v", err)
	}
	// The majority elects a new leader and carries on.
	testenv.WaitFor(t, "the majority to elect a leader", func() bool {
		for _, s := range c.Stores {
			if s != nil && s != l && s.IsLeader() {
				return true
			}
		}
		return false
	})
	for i := 0; i < 30; i++ { // enough entries to snapshot past the isolated node
		if err := withLeader(t, c, func(s *raftstore.Store) error {
			if s == l {
				return raftstore.ErrNotLeader
			}
			return is.issue(ctx, t, s, 2)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if idx, _ := l.Digest(); idx != idx0 {
		t.Fatalf("partitioned node applied entries %d -> %d", idx0, idx)
	}
	if _, err := l.Connection(ctx, "saeA", "saeB"); err == nil {
		t.Fatal("partitioned ex-leader served a read")
	}
	for _, s := range c.Stores {
		if s != l {
			if err := s.Snapshot(ctx); err != nil {
				t.Logf("snapshot on %v: %v", s.Stats()["state"], err)
			}
		}
	}
	// 3. Heal: the lagging node catches up (by snapshot install).
	c.Heal()
	round(5)
	c.WaitDigestsEqual(t)
	if n := l.Stats()["fsm_restores"]; n == restores0 {
		t.Errorf("lagging node installed no snapshot (restores %s)", n)
	}
	st, err := c.Leader(t).Connection(ctx, "saeA", "saeB")
	if err != nil {
		t.Fatal(err)
	}
	if st.IssuedKeys != int64(len(is.ids)) {
		t.Errorf("issued %d keys, leader counts %d (failed calls %d)", len(is.ids), st.IssuedKeys, is.fails)
	}
	if want := int64(40*1024*8) - int64(len(is.ids))*256; st.StoredBits < 0 || st.StoredBits > want {
		t.Errorf("stored bits %d > %d", st.StoredBits, want)
	}
}

// TestLeaderChangesAndMembership: subscribers see true on the new leader
// after a graceful shutdown hands leadership over; Join and Remove change
// the configuration; a joined node catches up to the same digest.
func TestLeaderChangesAndMembership(t *testing.T) {
	ctx := ctxT(t)
	c := storetest.MakeCluster(t, 3)
	l := c.Leader(t)
	if err := l.RegisterConnection(ctx, testConn); err != nil {
		t.Fatal(err)
	}
	lid, _ := l.Leader()
	subs := map[string]<-chan bool{}
	for i, s := range c.Stores {
		subs[c.IDs[i]] = s.LeaderChanges(ctx)
	}
	if v := <-subs[lid]; !v {
		t.Fatal("leader's subscription did not start with true")
	}
	if err := l.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	c.Stores[c.Index(lid)] = nil
	if _, ok := <-subs[lid]; ok {
		// false may arrive before the channel closes
		for range subs[lid] {
		}
	}
	// Exactly one of the others announces leadership.
	got := make(chan string, 2)
	for id, ch := range subs {
		if id == lid {
			continue
		}
		go func() {
			for v := range ch {
				if v {
					got <- id
					return
				}
			}
		}()
	}
	var newID string
	select {
	case newID = <-got:
	case <-ctx.Done():
		t.Fatal("no node announced leadership after graceful shutdown")
	}
	nl := c.Store(newID)
	if !nl.IsLeader() {
		t.Fatalf("%s announced leadership but is not leader", newID)
	}
	// Remove the stopped node, then a fresh node joins.
	if err := nl.Remove(ctx, lid); err != nil {
		t.Fatal(err)
	}
	srvs, err := nl.Servers(ctx)
	if err != nil || len(srvs) != 2 {
		t.Fatalf("servers after remove: %v %v", srvs, err)
	}
	for _, f := range c.Followers() {
		if err := f.Join(ctx, "x", "y"); !errors.Is(err, raftstore.ErrNotLeader) {
			t.Fatalf("join on follower: %v", err)
		}
	}
	if err := nl.AddBlock(ctx, raftstore.Block{ConnectionID: testConn.ID(), BlockID: "b", Bits: randBlock(t, 64)}); err != nil {
		t.Fatal(err)
	}
	nid, ns := c.AddNode(t)
	if err := nl.Join(ctx, nid, nid); err != nil {
		t.Fatal(err)
	}
	if err := nl.Join(ctx, nid, nid); err != nil {
		t.Fatalf("second join: %v", err)
	}
	c.WaitDigestsEqual(t)
	if _, d := ns.Digest(); d == "" {
		t.Fatal("joined node has no state")
	}
	if st := ns.LocalConnections(); len(st) != 1 || st[0].StoredBits != 64*8 {
		t.Fatalf("joined node state %+v", st)
	}
}

func TestPlugins(t *testing.T) {
	ctx := ctxT(t)
	c := storetest.MakeCluster(t, 3, storetest.WithConfig(func(i int, cfg *raftstore.Config) {
		cfg.SnapshotThreshold, cfg.TrailingLogs, cfg.SnapshotInterval = 2, 1, 50*time.Millisecond
	}))
	l := c.Leader(t)
	wasm := randBlock(t, 4096)
	mod := raftstore.PluginModule{Name: "cascade2", Step: "reconcile", Version: "2.0.0", ABI: 1, WASM: wasm}
	if err := l.InstallPlugin(ctx, mod); err != nil {
		t.Fatal(err)
	}
	if err := l.InstallPlugin(ctx, mod); err != nil {
		t.Fatalf("identical reinstall: %v", err)
	}
	bad := mod
	bad.Name, bad.SHA256 = "evil", "00"
	if err := l.InstallPlugin(ctx, bad); !errors.Is(err, raftstore.ErrInvalid) {
		t.Fatalf("sha mismatch: %v", err)
	}
	other := mod
	other.WASM = randBlock(t, 10)
	if err := l.InstallPlugin(ctx, other); !errors.Is(err, raftstore.ErrInvalid) {
		t.Fatalf("different content under the same name: %v", err)
	}
	if err := l.UsePlugin(ctx, "reconcile", "cascade2"); err != nil {
		t.Fatal(err)
	}
	if err := l.RemovePlugin(ctx, "cascade2"); !errors.Is(err, raftstore.ErrInvalid) {
		t.Fatalf("removing an active plugin: %v", err)
	}
	ps, err := l.Plugins(ctx)
	if err != nil || ps.Active["reconcile"] != "cascade2" || len(ps.Installed) != 1 || ps.Installed[0].WASM != nil {
		t.Fatalf("plugins %+v %v", ps, err)
	}
	c.WaitDigestsEqual(t)
	for _, f := range c.Followers() {
		m, err := f.PluginModule(ctx, "cascade2")
		if err != nil || !bytes.Equal(m.WASM, wasm) || m.Version != "2.0.0" {
			t.Fatalf("module on follower: %v", err)
		}
		if _, err := f.Plugins(ctx); !errors.Is(err, raftstore.ErrNotLeader) {
			t.Fatalf("follower Plugins: %v", err)
		}
	}
	if err := l.UsePlugin(ctx, "reconcile", ""); err != nil {
		t.Fatal(err)
	}
	if err := l.RemovePlugin(ctx, "cascade2"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.PluginModule(ctx, "cascade2"); !errors.Is(err, raftstore.ErrKeyNotFound) {
		t.Fatalf("removed module: %v", err)
	}
	c.WaitDigestsEqual(t)
}
