// Package storetest builds in-memory Raft sites for tests: n nodes on
// raft.NewInmemTransport with fast timeouts, each with its own
// t.TempDir(), logging to t.Log, plus crash, restart and partition helpers
// built on the in-memory transports' Connect/Disconnect. It is the one
// in-process cluster harness (docs/CONTRIBUTING.md, "Cluster harnesses"):
// a node runs a raftstore.Store alone, or whatever WithOpen opens on it —
// node's tests run a whole qkdkms node, node/kme's put a KME and an HTTPS
// server beside each store.
package storetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
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
	ids    []string
	addr   func(id string) string
	kek    []byte
	open   func(ctx context.Context, cfg raftstore.Config) (Member, error)
	noWait bool
}

// A Member is what runs on one node: by default its raftstore.Store alone
// (see WithOpen).
type Member interface {
	Store() *raftstore.Store
	// Kill stops the member at once, as a crash does; its data stays.
	Kill()
	// Close stops it as an operator does: a leader hands leadership to
	// another voter first.
	Close(ctx context.Context) error
}

// StoreMember is the default member: store s alone; Kill is its Close,
// Close its Shutdown.
func StoreMember(s *raftstore.Store) Member { return storeMember{s} }

type storeMember struct{ s *raftstore.Store }

func (m storeMember) Store() *raftstore.Store         { return m.s }
func (m storeMember) Kill()                           { _ = m.s.Close() }
func (m storeMember) Close(ctx context.Context) error { return m.s.Shutdown(ctx) }

func openStore(ctx context.Context, cfg raftstore.Config) (Member, error) {
	s, err := raftstore.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return StoreMember(s), nil
}

// WithOpen starts node i's member from its config (cfg.Transport is the
// node's in-memory transport, cfg.Logger the cluster's) in place of
// raftstore.Open: a harness that runs a whole node on each member opens it
// here. Crash then Kills the member, Stop Closes it.
func WithOpen(open func(ctx context.Context, cfg raftstore.Config) (Member, error)) Option {
	return func(o *options) { o.open = open }
}

// WithIDs names the nodes (len(ids) must be n) instead of prefix+i.
func WithIDs(ids ...string) Option { return func(o *options) { o.ids = ids } }

// WithAddrs gives node id's in-memory transport the address addr(id)
// instead of id: a harness whose members also serve on real sockets names
// the transports after them, so that a Raft leader's address is where its
// member serves.
func WithAddrs(addr func(id string) string) Option { return func(o *options) { o.addr = addr } }

// WithKEK sets the site's KEK (default: a random one, see Cluster.KEK).
func WithKEK(kek []byte) Option { return func(o *options) { o.kek = kek } }

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
// WithIDPrefix, WithIDs), which is also its Raft address (see WithAddrs).
// Stores[i] is nil while node i is down; read it directly only when no
// other goroutine crashes or restarts nodes (else use Leader, Followers,
// Store).
type Cluster struct {
	t       testing.TB
	KEK     []byte
	IDs     []string
	Stores  []*raftstore.Store // nil while a node is down
	Trans   []*raft.InmemTransport
	members []Member // nil while a node is down
	cfgs    []raftstore.Config
	addr    func(id string) string
	open    func(ctx context.Context, cfg raftstore.Config) (Member, error)
	mods    []func(i int, c *raftstore.Config)
	mu      sync.Mutex
	group   []int
	down    []bool // crashed or stopped: unreachable until Restart
	ngroup  int
	prefix  string
	log     *slog.Logger
}

// MakeCluster starts n nodes bootstrapped as one site and waits for a
// leader (see NoLeaderWait). Nodes are shut down in t.Cleanup.
func MakeCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	o := options{level: slog.LevelWarn, prefix: "node", addr: func(id string) string { return id }, open: openStore}
	for _, f := range opts {
		f(&o)
	}
	if o.ids != nil && len(o.ids) != n {
		t.Fatalf("storetest: %d IDs for %d nodes", len(o.ids), n)
	}
	c := &Cluster{t: t, KEK: o.kek, group: make([]int, n), down: make([]bool, n), prefix: o.prefix, addr: o.addr, open: o.open, mods: o.mods}
	if c.KEK == nil {
		c.KEK = make([]byte, raftstore.KEKSize)
		if _, err := rand.Read(c.KEK); err != nil {
			t.Fatal(err)
		}
	}
	c.log = testenv.Logger(t, o.level) // before the cleanup that stops the nodes
	if o.silent {
		c.log = slog.New(slog.DiscardHandler)
	}
	var servers []raft.Server
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s%d", c.prefix, i)
		if o.ids != nil {
			id = o.ids[i]
		}
		c.IDs = append(c.IDs, id)
		servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(c.addr(id))})
	}
	for i := 0; i < n; i++ {
		_, tr := raft.NewInmemTransport(raft.ServerAddress(c.addr(c.IDs[i])))
		c.Trans = append(c.Trans, tr)
		c.cfgs = append(c.cfgs, c.config(t, i, tr, servers))
	}
	c.Stores = make([]*raftstore.Store, n)
	c.members = make([]Member, n)
	c.reconnect()
	t.Cleanup(c.Shutdown)
	for i := 0; i < n; i++ {
		c.start(t, i)
	}
	if !o.noWait {
		c.Leader(t)
	}
	return c
}

// config is node i's config: fast timeouts, a fresh data dir, then the
// test's WithConfig changes.
func (c *Cluster) config(t testing.TB, i int, tr raft.Transport, boot []raft.Server) raftstore.Config {
	cfg := raftstore.Config{
		NodeID: c.IDs[i], DataDir: t.TempDir(), Transport: tr, KEK: c.KEK, Bootstrap: boot,
		Logger:           c.log, // the store adds its node ID
		NoSync:           true,
		HeartbeatTimeout: testenv.Scaled(100 * time.Millisecond), ElectionTimeout: testenv.Scaled(100 * time.Millisecond),
		LeaderLeaseTimeout: testenv.Scaled(100 * time.Millisecond), CommitTimeout: 5 * time.Millisecond,
	}
	for _, m := range c.mods {
		m(i, &cfg)
	}
	return cfg
}

// Logger is the logger the nodes log to (t.Log at the cluster's level,
// nothing with Quiet, nothing once the test is over), for what a harness
// runs beside each store.
func (c *Cluster) Logger() *slog.Logger { return c.log }

// Shutdown kills every running node (no leadership transfer).
func (c *Cluster) Shutdown() {
	c.mu.Lock()
	members := slices.Clone(c.members)
	clear(c.members)
	clear(c.Stores)
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range members {
		if m != nil {
			wg.Go(m.Kill)
		}
	}
	wg.Wait()
}

// start opens node i's member (it is down) and marks it up.
func (c *Cluster) start(t testing.TB, i int) Member {
	t.Helper()
	c.mu.Lock()
	c.down[i] = false
	cfg := c.cfgs[i]
	c.mu.Unlock()
	c.reconnect()
	m, err := c.open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("storetest: open %s: %v", c.IDs[i], err)
	}
	c.mu.Lock()
	c.members[i], c.Stores[i] = m, m.Store()
	c.mu.Unlock()
	return m
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

// Member returns node id's member (nil while down).
func (c *Cluster) Member(id string) Member {
	i := c.Index(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i]
}

// Members returns the running members in node order.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Member
	for _, m := range c.members {
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

// Addr returns node id's Raft address.
func (c *Cluster) Addr(id string) string { return c.addr(id) }

// Config returns node i's config (e.g. its DataDir).
func (c *Cluster) Config(i int) raftstore.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfgs[i]
}

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
				ti.Connect(raft.ServerAddress(c.addr(c.IDs[j])), tj)
			} else {
				ti.Disconnect(raft.ServerAddress(c.addr(c.IDs[j])))
			}
		}
	}
}

// AddNode starts a new, empty node (no bootstrap) connected to the others.
// It becomes part of the site once the leader Joins it (id, Addr(id)).
func (c *Cluster) AddNode(t testing.TB) (string, *raftstore.Store) {
	t.Helper()
	id := fmt.Sprintf("%s%d", c.prefix, len(c.IDs))
	c.Reserve(t, id)
	return id, c.Restart(t, id).Store()
}

// Reserve adds node id, down: an empty data dir, no bootstrap, its
// in-memory transport made. Restart starts it; it becomes part of the site
// once the leader Joins it (a test of joining reserves the nodes that may
// join before any starts).
func (c *Cluster) Reserve(t testing.TB, id string) {
	t.Helper()
	_, tr := raft.NewInmemTransport(raft.ServerAddress(c.addr(id)))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.IDs = append(c.IDs, id)
	c.Trans = append(c.Trans, tr)
	c.group = append(c.group, 0)
	c.down = append(c.down, true)
	c.cfgs = append(c.cfgs, c.config(t, len(c.IDs)-1, tr, nil))
	c.Stores = append(c.Stores, nil)
	c.members = append(c.members, nil)
}

// Crash kills node id (no leadership transfer) and cuts it off from the
// others. Its data stays.
func (c *Cluster) Crash(id string) {
	i := c.Index(id)
	m := c.take(i)
	c.cutOff(i)
	if m != nil {
		m.Kill()
	}
}

// take removes node i's member from the running ones and returns it.
func (c *Cluster) take(i int) Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.members[i]
	c.members[i], c.Stores[i] = nil, nil
	return m
}

// cutOff marks node i down: unreachable until Restart.
func (c *Cluster) cutOff(i int) {
	c.mu.Lock()
	c.down[i] = true
	c.mu.Unlock()
	c.reconnect()
}

// Restart starts node id again (crashed, stopped or reserved) from its
// data directory, on a fresh in-memory transport with the same address.
func (c *Cluster) Restart(t testing.TB, id string) Member {
	t.Helper()
	i := c.Index(id)
	if c.Member(id) != nil {
		t.Fatalf("storetest: %s is running", id)
	}
	_, tr := raft.NewInmemTransport(raft.ServerAddress(c.addr(id)))
	c.mu.Lock()
	c.Trans[i] = tr
	c.cfgs[i].Transport = tr
	c.mu.Unlock()
	return c.start(t, i)
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
// data stays. It returns the member's Close error.
func (c *Cluster) Stop(ctx context.Context, id string) error {
	i := c.Index(id)
	var err error
	if m := c.take(i); m != nil {
		err = m.Close(ctx)
	}
	c.cutOff(i)
	return err
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
