package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"qkdkms/etsi/pki"
	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
	"qkdkms/raftstore/storetest"
)

// testPKI is a demo PKI in a temp dir: the CA, node certificates for any
// (KME, node) pair, an operator per KME and SAE certificates.
type testPKI struct {
	dir string
	ca  *pki.CA
	mu  sync.Mutex
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := pki.Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{dir: dir, ca: ca}
}

func (p *testPKI) caFile() string { return filepath.Join(p.dir, "ca.crt") }

// node issues (once) a certificate for node name of kme; returns cert, key paths.
func (p *testPKI) node(t testing.TB, kme, name string) (string, string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	file := kme + "-" + name
	crt := filepath.Join(p.dir, file+".crt")
	if _, err := pki.LoadLeaf(p.dir, file); err != nil {
		l, err := p.ca.IssueNode(name, kme, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Write(p.dir, file); err != nil {
			t.Fatal(err)
		}
	}
	return crt, filepath.Join(p.dir, file+".key")
}

func (p *testPKI) operator(t testing.TB, kme string) (string, string) {
	t.Helper()
	name := "op-" + kme
	l, err := p.ca.IssueOperator(name, kme)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Write(p.dir, name); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
}

func (p *testPKI) clientTLS(t testing.TB, certFile, keyFile string) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return pki.ClientConfig(cert, p.ca.Pool())
}

func (p *testPKI) adminClient(t testing.TB, kme string, addrs ...string) *AdminClient {
	t.Helper()
	crt, key := p.operator(t, kme)
	c, err := NewAdminClient(addrs, p.caFile(), crt, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testSite is a site of whole nodes in the test process, built on
// raftstore/storetest (docs/CONTRIBUTING.md, "Cluster harnesses"): each
// storetest member is a Node serving TLS, the ETSI and admin APIs, links
// and discovery on its own loopback port, with its Raft on the member's
// in-memory transport, named after that port so that a leader's Raft
// address is where it serves. With raftOverTLS the nodes carry Raft on
// their port instead, as in production (the in-memory transports are
// then unused, and storetest's Partition cuts nothing).
type testSite struct {
	t     testing.TB
	pki   *testPKI
	kme   string
	kek   string // the KEK file
	ids   []string
	addrs map[string]string
	peers map[string][]string
	c     *storetest.Cluster // nil until boot

	mu  sync.Mutex
	lns map[string]net.Listener // bound, not yet handed to a node

	link LinkConfig // QKD link settings (off unless PSKFile is set)
	// maxConns is max_connections of every node (0: the default).
	maxConns int
	links    []PeerLink // per-peer link drivers
	// scrapeIDs is metrics.scrape_identities of every node.
	scrapeIDs []string
	// crlFile and tlsReload are tls.crl_file and tls.reload_interval.
	crlFile     string
	tlsReload   time.Duration
	raftOverTLS bool
	// dataDirs, when set, are the nodes' data dirs (restored ones: no
	// bootstrap), else storetest makes fresh ones.
	dataDirs map[string]string
	// configure, when set, changes a node's config before it starts.
	configure func(cfg *Config)
}

// newTestSite starts n bootstrapped nodes of KME kme.
func newTestSite(t testing.TB, p *testPKI, kme string, n int, peers map[string][]string) *testSite {
	t.Helper()
	s := allocSite(t, p, kme, n)
	s.boot(peers)
	return s
}

// allocSite binds the ports of n nodes n1..n<n> (so peers can be
// configured before any node starts); boot starts them.
func allocSite(t testing.TB, p *testPKI, kme string, n int) *testSite {
	t.Helper()
	var ids []string
	for i := 1; i <= n; i++ {
		ids = append(ids, fmt.Sprintf("n%d", i))
	}
	return allocSiteAt(t, p, kme, filepath.Join(t.TempDir(), kme+".kek"), ids, nil)
}

// allocSiteAt binds the ports of nodes ids, at addrs[id] when given
// (waiting until the address is free again), else on a fresh port; the
// site's KEK is kekFile, made when it does not exist.
func allocSiteAt(t testing.TB, p *testPKI, kme, kekFile string, ids []string, addrs map[string]string) *testSite {
	t.Helper()
	s := &testSite{t: t, pki: p, kme: kme, kek: kekFile, ids: ids, addrs: map[string]string{}, lns: map[string]net.Listener{}}
	if _, err := os.Stat(kekFile); errors.Is(err, os.ErrNotExist) {
		if _, err := raftstore.GenerateKEK(kekFile); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(s.closeListeners)
	for _, id := range ids {
		addr := "127.0.0.1:0"
		if a, ok := addrs[id]; ok {
			addr = a
		}
		s.bind(id, addr)
	}
	return s
}

// bind binds node id's port at addr (its first start takes it).
func (s *testSite) bind(id, addr string) {
	ln := listenAt(s.t, addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lns[id] = ln
	s.addrs[id] = ln.Addr().String()
}

// listenAt binds addr, waiting while an old socket of a stopped node
// lingers on it.
func listenAt(t testing.TB, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	testenv.WaitFor(t, "the address "+addr+" to be free", func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	return ln
}

func (s *testSite) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ln := range s.lns {
		ln.Close()
	}
	clear(s.lns)
}

// boot starts the site's nodes, bootstrapped as one site (unless their data
// dirs are restored ones) with peers as the other sites' addresses.
func (s *testSite) boot(peers map[string][]string) {
	s.t.Helper()
	s.peers = peers
	kek, err := raftstore.LoadKEK(s.kek)
	if err != nil {
		s.t.Fatal(err)
	}
	lvl := slog.LevelInfo
	if _, bench := s.t.(*testing.B); bench {
		lvl = slog.LevelError // benchmark logs are always printed
	}
	s.c = storetest.MakeCluster(s.t, len(s.ids), storetest.WithIDs(s.ids...), storetest.WithKEK(kek),
		storetest.WithAddrs(s.addr), storetest.WithLogLevel(lvl),
		storetest.WithOpen(s.open), storetest.NoLeaderWait(), storetest.WithConfig(s.raftConfig))
	// A fresh site starts at cluster version 1 and raises it once every
	// node has reported what it supports (docs/RAFT-FORMAT.md): commands
	// of later versions (block import, ...) are refused until then.
	testenv.WaitFor(s.t, "site "+s.kme+" at the newest cluster version", func() bool {
		for _, n := range s.live() {
			if n.Store().ClusterVersion() < n.Store().SupportedVersion() {
				return false
			}
		}
		return true
	})
}

// raftConfig sets the nodes' Raft timing (slower than storetest's: a node
// runs much more beside its store) and the restored data dirs.
func (s *testSite) raftConfig(_ int, c *raftstore.Config) {
	c.HeartbeatTimeout = testenv.Scaled(300 * time.Millisecond)
	c.ElectionTimeout = testenv.Scaled(300 * time.Millisecond)
	c.LeaderLeaseTimeout = testenv.Scaled(150 * time.Millisecond)
	if d, ok := s.dataDirs[c.NodeID]; ok {
		c.DataDir, c.Bootstrap = d, nil
	}
}

// config is node id's config on ln, without Raft settings.
func (s *testSite) config(id string, ln net.Listener) Config {
	crt, key := s.pki.node(s.t, s.kme, id)
	return Config{
		NodeID:         id,
		KMEID:          s.kme,
		Listener:       ln,
		TLS:            TLSFiles{CA: s.pki.caFile(), Cert: crt, Key: key, CRLFile: s.crlFile, ReloadInterval: Duration(s.tlsReload)},
		KEKFile:        s.kek,
		Peers:          s.peers,
		Link:           s.link,
		Links:          s.links,
		Metrics:        MetricsConfig{ScrapeIdentities: s.scrapeIDs},
		MaxConnections: s.maxConns,
	}
}

// open is the site's storetest.WithOpen: it starts node rc.NodeID on its
// port (the one bound by allocSite at first, the same address again after
// a crash) with the Raft settings storetest chose.
func (s *testSite) open(ctx context.Context, rc raftstore.Config) (storetest.Member, error) {
	id := rc.NodeID
	s.mu.Lock()
	ln, ok := s.lns[id]
	delete(s.lns, id)
	s.mu.Unlock()
	if !ok {
		ln = listenAt(s.t, s.addr(id))
	}
	cfg := s.config(id, ln)
	cfg.DataDir = rc.DataDir
	if len(rc.Bootstrap) > 0 {
		cfg.Bootstrap = map[string]string{}
		for _, b := range rc.Bootstrap {
			cfg.Bootstrap[string(b.ID)] = string(b.Address)
		}
	}
	cfg.Raft = RaftTiming{
		HeartbeatTimeout:   Duration(rc.HeartbeatTimeout),
		ElectionTimeout:    Duration(rc.ElectionTimeout),
		LeaderLeaseTimeout: Duration(rc.LeaderLeaseTimeout),
		NoSync:             rc.NoSync,
	}
	if !s.raftOverTLS {
		cfg.RaftTransport = rc.Transport
	}
	cfg.Logger = rc.Logger
	if s.configure != nil {
		s.configure(&cfg)
	}
	n, err := New(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("start %s/%s: %w", s.kme, id, err)
	}
	n.Start()
	return n, nil
}

// addr is node id's address.
func (s *testSite) addr(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[id]
}

// node returns node id (nil while down).
func (s *testSite) node(id string) *Node {
	if m := s.c.Member(id); m != nil {
		return m.(*Node)
	}
	return nil
}

// crash kills node id; restart starts it again on its address and data.
func (s *testSite) crash(id string) { s.c.Crash(id) }

func (s *testSite) restart(id string) *Node {
	s.t.Helper()
	return s.c.Restart(s.t, id).(*Node)
}

// add starts node id, new and empty (no bootstrap), on a fresh port: the
// site takes it in once the leader joins it.
func (s *testSite) add(id string) *Node {
	s.t.Helper()
	s.bind(id, "127.0.0.1:0")
	s.c.Reserve(s.t, id)
	return s.restart(id)
}

// live returns the running nodes in ID order.
func (s *testSite) live() []*Node {
	var out []*Node
	for _, m := range s.c.Members() {
		out = append(out, m.(*Node))
	}
	return out
}

func (s *testSite) allAddrs() []string {
	var out []string
	for _, id := range s.ids {
		out = append(out, s.addrs[id])
	}
	return out
}

// leader waits until the live nodes agree on a leader among them.
func (s *testSite) leader() *Node {
	s.t.Helper()
	var leader *Node
	testenv.WaitFor(s.t, "the nodes of site "+s.kme+" to agree on a leader", func() bool {
		for _, n := range s.live() {
			if n.Store().IsLeader() {
				agree := true
				for _, m := range s.live() {
					if id, _ := m.Store().Leader(); id != n.ID() {
						agree = false
					}
				}
				if agree {
					leader = n
					return true
				}
			}
		}
		return false
	})
	return leader
}

func (s *testSite) follower() *Node {
	s.t.Helper()
	l := s.leader()
	for _, n := range s.live() {
		if n != l {
			return n
		}
	}
	s.t.Fatal("no follower")
	return nil
}

// waitDigests waits until every live node applied the same index and has
// the same digest, and returns it. Nothing may keep writing to the site
// meanwhile (a link whose pool has room, say): the nodes are read one after
// the other, and under a steady stream of entries no poll sees them at one
// index.
func (s *testSite) waitDigests() string {
	s.t.Helper()
	return s.c.WaitDigestsEqual(s.t)
}

func httpClient(cfg *tls.Config) *http.Client {
	return &http.Client{Timeout: testenv.Scaled(20 * time.Second), Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 64}}
}
