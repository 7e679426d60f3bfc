// Package storetest builds in-memory Raft sites of raftstore.Stores for
// tests: n nodes on raft.NewInmemTransport with fast timeouts, each with its
// own t.TempDir(), logging to t.Log, plus crash, restart and partition
// helpers built on the in-memory transports' Connect/Disconnect. It is the
// base of every in-process cluster harness: node/kme puts a KME and an
// HTTPS server on each node of a site it builds here.
package storetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
)

// Option changes a cluster's node configs.
type Option func(*options)

type options struct {
	mods   []func(i int, c *raftstore.Config)
	level  slog.Level
	silent bool
	prefix string
	noWait bool
}

// WithConfig lets the test adjust node i's Config before it opens.
func WithConfig(f func(i int, c *raftstore.Config)) Option {
	return func(o *options) { o.mods = append(o.mods, f) }
}

// WithLogLevel sets the nodes' slog level (default Warn).
func WithLogLevel(l slog.Level) Option { return func(o *options) { o.level = l } }

// Quiet discards node logs.
func Quiet() Option { return func(o *options) { o.silent = true } }

// WithIDPrefix names node i prefix+i instead of "node<i>" (its Raft ID and
// in-memory address), so that several sites in one test have distinct
// node names.
func WithIDPrefix(prefix string) Option { return func(o *options) { o.prefix = prefix } }

// NoLeaderWait makes MakeCluster return once the nodes are open, without
// waiting for a leader: a test that starts several sites lets them elect
// at the same time, then calls Leader.
func NoLeaderWait() Option { return func(o *options) { o.noWait = true } }

// Cluster is a site of in-memory nodes. Node i has ID "node<i>" (see
// WithIDPrefix), which is also its Raft address. Stores[i]
// is nil while node i is down; read it directly only when no other
// goroutine crashes or restarts nodes (else use Leader, Followers, Store).
type Cluster struct {
	t      testing.TB
	KEK    []byte
	IDs    []string
	Stores []*raftstore.Store // nil while a node is down
	Trans  []*raft.InmemTransport
	cfgs   []raftstore.Config
	mu     sync.Mutex
	group  []int
	down   []bool // crashed or stopped: unreachable until Restart
	ngroup int
	prefix string
	logw   *tWriter
	log    *slog.Logger
}

type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(p[:len(p)-min(1, len(p))]))
	}
	return len(p), nil
}

// MakeCluster starts n nodes bootstrapped as one site and waits for a
// leader (see NoLeaderWait). Nodes are shut down in t.Cleanup.
func MakeCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	o := options{level: slog.LevelWarn, prefix: "node"}
	for _, f := range opts {
		f(&o)
	}
	c := &Cluster{t: t, KEK: make([]byte, raftstore.KEKSize), group: make([]int, n), down: make([]bool, n), prefix: o.prefix}
	if _, err := rand.Read(c.KEK); err != nil {
		t.Fatal(err)
	}
	c.logw = &tWriter{t: t}
	var out io.Writer = c.logw
	if o.silent {
		out = io.Discard
	}
	c.log = slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: o.level}))
	var servers []raft.Server
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s%d", c.prefix, i)
		c.IDs = append(c.IDs, id)
		servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(id)})
	}
	for i := 0; i < n; i++ {
		_, tr := raft.NewInmemTransport(raft.ServerAddress(c.IDs[i]))
		c.Trans = append(c.Trans, tr)
		cfg := raftstore.Config{
			NodeID: c.IDs[i], DataDir: t.TempDir(), Transport: tr, KEK: c.KEK, Bootstrap: servers,
			Logger:           c.log, // the store adds its node ID
			NoSync:           true,
			HeartbeatTimeout: testenv.Scaled(100 * time.Millisecond), ElectionTimeout: testenv.Scaled(100 * time.Millisecond),
			LeaderLeaseTimeout: testenv.Scaled(100 * time.Millisecond), CommitTimeout: 5 * time.Millisecond,
		}
		for _, m := range o.mods {
			m(i, &cfg)
		}
		c.cfgs = append(c.cfgs, cfg)
	}
	c.Stores = make([]*raftstore.Store, n)
	c.reconnect()
	for i := 0; i < n; i++ {
		s, err := raftstore.Open(context.Background(), c.cfgs[i])
		if err != nil {
			t.Fatalf("open %s: %v", c.IDs[i], err)
		}
		c.Stores[i] = s
	}
	t.Cleanup(func() {
		c.Shutdown()
		c.logw.mu.Lock()
		c.logw.done = true
		c.logw.mu.Unlock()
	})
	if !o.noWait {
		c.Leader(t)
	}
	return c
}

// Logger is the logger the nodes log to (t.Log at the cluster's level,
// nothing with Quiet, nothing once the test is over), for what a harness
// runs beside each store.
func (c *Cluster) Logger() *slog.Logger { return c.log }

// Shutdown stops every running node (no leadership transfer).
func (c *Cluster) Shutdown() {
	c.mu.Lock()
	stores := slices.Clone(c.Stores)
	clear(c.Stores)
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range stores {
		if s != nil {
			wg.Add(1)
			go func() { defer wg.Done(); _ = s.Close() }()
		}
	}
	wg.Wait()
}

// Index returns node id's position.
func (c *Cluster) Index(id string) int {
	for i, x := range c.IDs {
		if x == id {
			return i
		}
	}
	c.t.Fatalf("storetest: unknown node %q", id)
	return -1
}

// Store returns node id's store (nil while down).
func (c *Cluster) Store(id string) *raftstore.Store {
	i := c.Index(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Stores[i]
}

// Config returns node i's config (e.g. its DataDir).
func (c *Cluster) Config(i int) raftstore.Config { return c.cfgs[i] }

// Leader waits for a running node that leads and answers reads, and
// returns it.
func (c *Cluster) Leader(t testing.TB) *raftstore.Store {
	t.Helper()
	var leader *raftstore.Store
	testenv.WaitFor(t, "a leader that answers reads", func() bool {
		for _, s := range c.running() {
			if !s.IsLeader() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(500*time.Millisecond))
			_, err := s.Connections(ctx)
			cancel()
			if err == nil {
				leader = s
				return true
			}
		}
		return false
	})
	return leader
}

// Followers returns the running nodes that are not leader right now.
func (c *Cluster) Followers() []*raftstore.Store {
	var out []*raftstore.Store
	for _, s := range c.running() {
		if !s.IsLeader() {
			out = append(out, s)
		}
	}
	return out
}

// running returns the stores that are up (safe while other goroutines
// Crash or Restart nodes).
func (c *Cluster) running() []*raftstore.Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*raftstore.Store
	for _, s := range c.Stores {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// Partition cuts the named nodes off from the others (they can still talk
// among themselves).
func (c *Cluster) Partition(ids ...string) {
	c.mu.Lock()
	c.ngroup++
	for _, id := range ids {
		c.group[c.Index(id)] = c.ngroup
	}
	c.mu.Unlock()
	c.reconnect()
}

// Disconnect isolates one node (Heal reconnects it).
func (c *Cluster) Disconnect(id string) { c.Partition(id) }

// Heal reconnects every node with every other.
func (c *Cluster) Heal() {
	c.mu.Lock()
	clear(c.group)
	c.mu.Unlock()
	c.reconnect()
}

// reconnect connects every pair of nodes that are up and in the same
// group and disconnects every other pair: a node that is down refuses
// every RPC at once, as a closed port does, instead of leaving its peers'
// calls to wait out the in-memory transport's send timeout.
func (c *Cluster) reconnect() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, ti := range c.Trans {
		for j, tj := range c.Trans {
			if i == j {
				continue
			}
			if c.group[i] == c.group[j] && !c.down[i] && !c.down[j] {
				ti.Connect(raft.ServerAddress(c.IDs[j]), tj)
			} else {
				ti.Disconnect(raft.ServerAddress(c.IDs[j]))
			}
		}
	}
}

// AddNode starts a new, empty node (no bootstrap) connected to the others.
// It becomes part of the site once the leader Joins it (id, id as address).
func (c *Cluster) AddNode(t testing.TB) (string, *raftstore.Store) {
	t.Helper()
	i := len(c.IDs)
	id := fmt.Sprintf("%s%d", c.prefix, i)
	_, tr := raft.NewInmemTransport(raft.ServerAddress(id))
	cfg := c.cfgs[0]
	cfg.NodeID, cfg.DataDir, cfg.Transport, cfg.Bootstrap = id, t.TempDir(), tr, nil
	c.mu.Lock()
	c.IDs = append(c.IDs, id)
	c.Trans = append(c.Trans, tr)
	c.group = append(c.group, 0)
	c.down = append(c.down, false)
	c.cfgs = append(c.cfgs, cfg)
	c.Stores = append(c.Stores, nil)
	c.mu.Unlock()
	c.reconnect()
	s, err := raftstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	c.Stores[i] = s
	return id, s
}

// Crash stops node id abruptly (no leadership transfer) and cuts it off
// from the others. Its data stays.
func (c *Cluster) Crash(id string) {
	i := c.Index(id)
	s := c.take(i)
	c.cutOff(i)
	if s != nil {
		_ = s.Close()
	}
}

// take removes node i's store from the running ones and returns it.
func (c *Cluster) take(i int) *raftstore.Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.Stores[i]
	c.Stores[i] = nil
	return s
}

// cutOff marks node i down: unreachable until Restart.
func (c *Cluster) cutOff(i int) {
	c.mu.Lock()
	c.down[i] = true
	c.mu.Unlock()
	c.reconnect()
}

// Restart reopens a crashed node from its data directory on a fresh
// in-memory transport with the same address.
func (c *Cluster) Restart(t testing.TB, id string) *raftstore.Store {
	t.Helper()
	i := c.Index(id)
	if c.Stores[i] != nil {
		t.Fatalf("storetest: %s is running", id)
	}
	_, tr := raft.NewInmemTransport(raft.ServerAddress(id))
	c.mu.Lock()
	c.Trans[i] = tr
	c.down[i] = false
	c.mu.Unlock()
	cfg := c.cfgs[i]
	cfg.Transport = tr
	c.cfgs[i] = cfg
	c.reconnect()
	s, err := raftstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("restart %s: %v", id, err)
	}
	c.mu.Lock()
	c.Stores[i] = s
	c.mu.Unlock()
	return s
}

// WaitDigestsEqual waits until every running node applied the same index
// with the same state digest, and returns that digest.
func (c *Cluster) WaitDigestsEqual(t testing.TB) string {
	t.Helper()
	var last, d0 string
	equal := false
	defer func() {
		if !equal {
			t.Logf("storetest: last digests:%s", last)
		}
	}()
	testenv.WaitFor(t, "equal digests on every running node", func() bool {
		var idx0 uint64
		d0 = ""
		same := true
		last = ""
		for _, s := range c.running() {
			idx, d := s.Digest()
			last += fmt.Sprintf(" %d:%.12s", idx, d)
			if d0 == "" {
				idx0, d0 = idx, d
			} else if idx != idx0 || d != d0 {
				same = false
			}
		}
		return same && d0 != ""
	})
	equal = true
	return d0
}

// Reconfigure changes node id's Config for its next Restart (an upgrade
// plays a new binary with a higher MaxVersion).
func (c *Cluster) Reconfigure(id string, f func(*raftstore.Config)) {
	i := c.Index(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.cfgs[i])
}

// Stop shuts node id down as an operator does before an upgrade: a leader
// hands leadership to another voter first, then the node is cut off. Its
// data stays.
func (c *Cluster) Stop(ctx context.Context, id string) {
	i := c.Index(id)
	if s := c.take(i); s != nil {
		_ = s.Shutdown(ctx)
	}
	c.cutOff(i)
}

// ReportVersions delivers every running node's supported cluster version to
// the current leader, as node/kme's version reporter does over the
// forwarding path; errors (no leader at the moment) are returned joined.
func (c *Cluster) ReportVersions(ctx context.Context) error {
	var leader *raftstore.Store
	for _, s := range c.running() {
		if s.IsLeader() {
			leader = s
		}
	}
	if leader == nil {
		return raftstore.ErrNoLeader
	}
	var errs []error
	for _, s := range c.running() {
		errs = append(errs, leader.ReportVersion(ctx, s.NodeID(), s.SupportedVersion()))
	}
	return errors.Join(errs...)
}
