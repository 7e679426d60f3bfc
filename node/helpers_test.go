package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"qkdkms/etsi/pki"
	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
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

// testSite is a site of in-process nodes on loopback.
type testSite struct {
	t      testing.TB
	pki    *testPKI
	kme    string
	kek    string
	peers  map[string][]string
	mu     sync.Mutex
	nodes  map[string]*Node
	addrs  map[string]string
	dirs   map[string]string
	lns    map[string]net.Listener
	logger *slog.Logger
	link   LinkConfig // QKD link settings (off unless PSKFile is set)
	// maxConns is max_connections of every node (0: the default).
	maxConns int
	links    []PeerLink // per-peer link drivers
	// scrapeIDs is metrics.scrape_identities of every node.
	scrapeIDs []string
	// crlFile and tlsReload are tls.crl_file and tls.reload_interval.
	crlFile   string
	tlsReload time.Duration
}

func testLogger(t testing.TB) *slog.Logger {
	lvl := slog.LevelInfo
	if _, bench := t.(*testing.B); bench {
		lvl = slog.LevelError // benchmark logs are always printed
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: lvl}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newTestSite starts n bootstrapped nodes of KME kme.
func newTestSite(t testing.TB, p *testPKI, kme string, n int, peers map[string][]string) *testSite {
	t.Helper()
	s := allocSite(t, p, kme, n)
	s.boot(peers)
	return s
}

// allocSite reserves the listeners of n nodes (so peers can be configured
// before any node starts); boot starts them.
func allocSite(t testing.TB, p *testPKI, kme string, n int) *testSite {
	t.Helper()
	s := &testSite{t: t, pki: p, kme: kme, nodes: map[string]*Node{}, addrs: map[string]string{},
		dirs: map[string]string{}, lns: map[string]net.Listener{}, logger: testLogger(t)}
	s.kek = filepath.Join(t.TempDir(), kme+".kek")
	if _, err := raftstore.GenerateKEK(s.kek); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("n%d", i)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.lns[id] = ln
		s.addrs[id] = ln.Addr().String()
		s.dirs[id] = filepath.Join(t.TempDir(), kme+"-"+id)
	}
	t.Cleanup(s.closeAll)
	return s
}

func (s *testSite) boot(peers map[string][]string) {
	s.t.Helper()
	s.peers = peers
	boot := map[string]string{}
	for id, a := range s.addrs {
		boot[id] = a
	}
	for _, id := range sortedKeys(s.lns) {
		s.start(id, s.lns[id], boot)
	}
	s.lns = nil
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

func (s *testSite) config(id string, ln net.Listener, boot map[string]string) Config {
	crt, key := s.pki.node(s.t, s.kme, id)
	return Config{
		NodeID:         id,
		KMEID:          s.kme,
		Listener:       ln,
		DataDir:        s.dirs[id],
		TLS:            TLSFiles{CA: s.pki.caFile(), Cert: crt, Key: key, CRLFile: s.crlFile, ReloadInterval: Duration(s.tlsReload)},
		KEKFile:        s.kek,
		Bootstrap:      boot,
		Peers:          s.peers,
		Link:           s.link,
		Links:          s.links,
		Metrics:        MetricsConfig{ScrapeIdentities: s.scrapeIDs},
		MaxConnections: s.maxConns,
		Raft: RaftTiming{
			HeartbeatTimeout:   Duration(testenv.Scaled(300 * time.Millisecond)),
			ElectionTimeout:    Duration(testenv.Scaled(300 * time.Millisecond)),
			LeaderLeaseTimeout: Duration(testenv.Scaled(150 * time.Millisecond)),
		},
		Logger: s.logger,
	}
}

func (s *testSite) start(id string, ln net.Listener, boot map[string]string) *Node {
	s.t.Helper()
	n, err := New(context.Background(), s.config(id, ln, boot))
	if err != nil {
		s.t.Fatalf("start %s/%s: %v", s.kme, id, err)
	}
	n.Start()
	s.mu.Lock()
	s.nodes[id] = n
	s.mu.Unlock()
	return n
}

// restart starts node id again on its old address and data dir.
func (s *testSite) restart(id string) *Node {
	s.t.Helper()
	var ln net.Listener
	var err error
	// The old socket may linger for a moment.
	testenv.WaitFor(s.t, "the address "+s.addrs[id]+" of "+id+" to be free again", func() bool {
		ln, err = net.Listen("tcp", s.addrs[id])
		return err == nil
	})
	return s.start(id, ln, nil)
}

func (s *testSite) drop(id string) {
	s.mu.Lock()
	delete(s.nodes, id)
	s.mu.Unlock()
}

func (s *testSite) live() []*Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Node
	for _, id := range sortedKeys(s.nodes) {
		out = append(out, s.nodes[id])
	}
	return out
}

func (s *testSite) allAddrs() []string {
	var out []string
	for _, id := range sortedKeys(s.addrs) {
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
	var last []string
	var d0 string
	converged := false
	defer func() {
		if !converged {
			s.t.Logf("site %s: last digests %v", s.kme, last)
		}
	}()
	testenv.WaitFor(s.t, "the digests of site "+s.kme+" to converge", func() bool {
		last = last[:0]
		var idx0 uint64
		same := true
		for i, n := range s.live() {
			idx, d := n.Store().Digest()
			last = append(last, fmt.Sprintf("%s@%d=%.12s", n.ID(), idx, d))
			if i == 0 {
				idx0, d0 = idx, d
			} else if idx != idx0 || d != d0 {
				same = false
			}
		}
		return same && len(last) > 0
	})
	converged = true
	return d0
}

func (s *testSite) closeAll() {
	for _, n := range s.live() {
		n.Kill()
	}
	for _, ln := range s.lns {
		ln.Close()
	}
}

func httpClient(cfg *tls.Config) *http.Client {
	return &http.Client{Timeout: testenv.Scaled(20 * time.Second), Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 64}}
}
