package raftstore_test

import (
	"context"
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

// TestRollingUpgrade upgrades a 3-node site one node at a time under load
// (docs/RAFT-FORMAT.md "Rolling upgrade"). Every node starts as an "old"
// binary (MaxVersion 1); each is stopped, given MaxVersion (today 3) and restarted
// while callers keep issuing keys and nodes keep reporting their versions.
// The version-2 command (import) is refused with ErrNotEnabled before it is
// proposed until the last node runs the new binary, and accepted after; no
// node stops on an unknown entry, no key is issued twice or lost, and the
// replicas end equal.
func TestRollingUpgrade(t *testing.T) {
	ctx := ctxT(t)
	c := storetest.MakeCluster(t, 3, storetest.WithConfig(func(i int, cfg *raftstore.Config) {
		cfg.MaxVersion = 1
		cfg.SnapshotThreshold = 30
		cfg.TrailingLogs = 10
		cfg.SnapshotInterval = 100 * time.Millisecond
	}))
	if err := withLeader(t, c, func(s *raftstore.Store) error { return s.RegisterConnection(ctx, testConn) }); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 60; i++ {
		if err := withLeader(t, c, func(s *raftstore.Store) error {
			return s.AddBlock(ctx, raftstore.Block{ConnectionID: testConn.ID(), BlockID: fmt.Sprint("b", i), Bits: randBlock(t, 1024)})
		}); err != nil && !errors.Is(err, raftstore.ErrBlockExists) {
			t.Fatal(err)
		}
	}
	beginImport := func() error {
		return withLeader(t, c, func(s *raftstore.Store) error {
			return s.BeginImport(ctx, testConn.MasterSAE, testConn.SlaveSAE, "imp1")
		})
	}

	// Load: callers issue keys (each request retried with its ID until it
	// succeeds); the nodes report their versions as node/kme does.
	is := &issuer{ids: map[string]bool{}, bits: map[string]bool{}, reqs: map[string]bool{}}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for loadCtx.Err() == nil {
				req, kids := uuid.NewString(), ids(2)
				err := withLeader(t, c, func(s *raftstore.Store) error { return is.issueReq(ctx, t, s, req, kids) })
				if errors.Is(err, raftstore.ErrInsufficientKeys) {
					return // the pool ran dry: enough load
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for loadCtx.Err() == nil {
			_ = c.ReportVersions(ctx)
			select {
			case <-loadCtx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	for n, id := range c.IDs {
		// Every node reported at least once since the last restart, so a
		// raise would have happened by now if it were allowed.
		testenv.WaitFor(t, "version reports to reach a leader", func() bool { return c.ReportVersions(ctx) == nil })
		if err := beginImport(); !errors.Is(err, raftstore.ErrNotEnabled) {
			t.Fatalf("with %d of 3 nodes upgraded: import = %v, want ErrNotEnabled", n, err)
		}
		for _, s := range c.Followers() {
			if v := s.ClusterVersion(); v != 1 {
				t.Fatalf("with %d of 3 nodes upgraded: cluster version %d", n, v)
			}
		}
		if err := c.Stop(ctx, id); err != nil {
			t.Fatalf("stop %s: %v", id, err)
		}
		c.Reconfigure(id, func(cfg *raftstore.Config) { cfg.MaxVersion = 0 })
		s := c.Restart(t, id).Store()
		if s.SupportedVersion() != raftstore.MaxVersion {
			t.Fatalf("%s supports %d after the upgrade", id, s.SupportedVersion())
		}
		c.WaitDigestsEqual(t)
	}
	testenv.WaitFor(t, "cluster version MaxVersion on every node", func() bool {
		for _, s := range c.Stores {
			if s == nil || s.ClusterVersion() != raftstore.MaxVersion {
				return false
			}
		}
		return true
	})
	if err := beginImport(); err != nil {
		t.Fatalf("import after the last upgrade: %v", err)
	}
	stopLoad()
	wg.Wait()

	c.WaitDigestsEqual(t)
	for _, s := range c.Stores {
		if st := s.Stats(); st["upgrade_required"] != "false" || st["cluster_version"] != fmt.Sprint(raftstore.MaxVersion) {
			t.Fatalf("%s: upgrade_required %s cluster_version %s", s.NodeID(), st["upgrade_required"], st["cluster_version"])
		}
	}
	st, err := c.Leader(t).Connection(ctx, testConn.MasterSAE, testConn.SlaveSAE)
	if err != nil {
		t.Fatal(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	if len(is.reqs) == 0 {
		t.Fatal("no key issued under load")
	}
	if st.IssuedKeys != int64(len(is.ids)) {
		t.Errorf("callers got %d keys, the site counts %d issued", len(is.ids), st.IssuedKeys)
	}
	if st.PendingImport != "imp1" {
		t.Errorf("pending import %q after the upgrade", st.PendingImport)
	}
}
