package kme

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/etsi/client"
	"qkdkms/etsi/pki"
	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
	"qkdkms/raftstore/storetest"
)

// The harness: two (or more) sites of N nodes each, in process. Each site
// is an in-memory Raft cluster from raftstore/storetest (bolt log stores on
// disk, node logs to t.Log); this file adds, per node, a KME and an
// httptest TLS server with real certificates from etsi/pki serving the
// ETSI API and the internal endpoints, and the inter-site cut.

type tnode struct {
	name  string
	site  *tsite
	store *raftstore.Store
	kme   *KME
	tsite *timingSite
	srv   *httptest.Server
	dead  atomic.Bool
}

type tsite struct {
	id    string
	c     *storetest.Cluster
	nodes []*tnode
	// cut makes this site's servers drop every peer (inter-site) call;
	// cutOnly, when set, limits that to paths with this prefix.
	cut     atomic.Bool
	cutOnly atomic.Value // string
}

type world struct {
	tb    testing.TB
	ca    *pki.CA
	pool  *x509.CertPool
	sites map[string]*tsite
	urls  map[string]string // Raft address (node name) → https base URL; fixed before any KME starts
}

type worldOpts struct {
	nodes  int  // per site
	noSync bool // fsync off in the bolt log store
	quiet  bool // discard logs (benchmarks)
	timing bool // record Site call latencies
	// raftDefaults keeps hashicorp/raft's production timeouts (1s) instead
	// of the fast test timeouts (benchmarks: no elections under CPU load).
	raftDefaults bool
}

func newWorld(tb testing.TB, opts worldOpts, siteIDs ...string) *world {
	tb.Helper()
	ca, err := pki.Init(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	w := &world{tb: tb, ca: ca, pool: ca.Pool(), sites: map[string]*tsite{}, urls: map[string]string{}}
	raftOpts := []storetest.Option{storetest.NoLeaderWait(), storetest.WithConfig(func(_ int, c *raftstore.Config) {
		c.NoSync = opts.noSync
		c.HeartbeatTimeout, c.ElectionTimeout = testenv.Scaled(200*time.Millisecond), testenv.Scaled(200*time.Millisecond)
		c.LeaderLeaseTimeout = testenv.Scaled(100 * time.Millisecond)
		if opts.raftDefaults {
			c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 0, 0, 0
		}
		c.RaftLogLevel = "error" // raft's connection errors after kills are noise here
	})}
	if opts.quiet {
		raftOpts = append(raftOpts, storetest.Quiet())
	}
	// The sites' stores, and each node's server, not started yet: every
	// KME is given the URLs of the other sites' nodes.
	for _, id := range siteIDs {
		s := &tsite{id: id, c: storetest.MakeCluster(tb, opts.nodes, append(raftOpts, storetest.WithIDPrefix(id+"-n"))...)}
		w.sites[id] = s
		for i, name := range s.c.IDs {
			n := &tnode{name: name, site: s, store: s.c.Stores[i], srv: httptest.NewUnstartedServer(nil)}
			tb.Cleanup(n.kill)
			w.urls[name] = "https://" + n.srv.Listener.Addr().String()
			s.nodes = append(s.nodes, n)
		}
	}
	for _, s := range w.sites {
		peers := map[string][]string{}
		for pid, ps := range w.sites {
			for _, n := range ps.nodes {
				if pid != s.id {
					peers[pid] = append(peers[pid], w.urls[n.name])
				}
			}
		}
		for _, n := range s.nodes {
			var site raftstore.Site = n.store
			hc := w.client(n.name, s.id)
			if opts.timing {
				n.tsite = &timingSite{Site: n.store}
				site, hc.Transport = n.tsite, timingRT{hc.Transport, n.tsite}
			}
			n.kme = New(Config{
				KMEID:       s.id,
				Site:        site,
				Peers:       peers,
				HTTPClient:  hc,
				ResolveAddr: func(a string) string { return cmp.Or(w.urls[a], a) },
				Logger:      s.c.Logger().With("node", n.name),
			})
			leaf, err := ca.IssueNode(n.name, s.id, nil)
			if err != nil {
				tb.Fatal(err)
			}
			cert, err := leaf.TLS()
			if err != nil {
				tb.Fatal(err)
			}
			n.srv.Config.Handler = n.handler()
			n.srv.TLS = pki.ServerConfig(cert, w.pool)
			n.srv.TLS.ClientAuth = tls.VerifyClientCertIfGiven
			n.srv.StartTLS()
		}
	}
	for _, s := range w.sites {
		s.c.Leader(tb)
	}
	// The nodes' version reports raise each site to this binary's cluster
	// version (docs/RAFT-FORMAT.md); imports need it.
	testenv.WaitFor(tb, "every node at the newest cluster version", func() bool {
		for _, s := range w.sites {
			for _, n := range s.nodes {
				if n.store.ClusterVersion() != raftstore.MaxVersion {
					return false
				}
			}
		}
		return true
	})
	return w
}

// handler is a node's HTTPS mux: the ETSI API and the internal endpoints;
// when the site is cut off, calls from other sites are dropped.
func (n *tnode) handler() http.Handler {
	api := etsi.NewHandler(n.kme, etsi.Options{Timeout: testenv.Scaled(10 * time.Second)})
	in := n.kme.InternalHandler()
	// Like node's mux: no path cleaning (no redirects), the ETSI handler
	// answers everything outside /internal/ (JSON 404s included).
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/internal/") {
			api.ServeHTTP(w, r)
			return
		}
		only, _ := n.site.cutOnly.Load().(string)
		if n.site.cut.Load() && strings.HasPrefix(r.URL.Path, "/internal/v1/peer/") && strings.HasPrefix(r.URL.Path, only) {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		in.ServeHTTP(w, r)
	})
}

// client is an mTLS client with the named node certificate.
func (w *world) client(name, kmeID string) *http.Client {
	leaf, err := w.ca.IssueNode(name, kmeID, nil)
	if err != nil {
		w.tb.Fatal(err)
	}
	return w.httpClient(leaf)
}

func (w *world) httpClient(leaf pki.Leaf) *http.Client {
	cert, err := leaf.TLS()
	if err != nil {
		w.tb.Fatal(err)
	}
	tr := &http.Transport{
		TLSClientConfig:     pki.ClientConfig(cert, w.pool),
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	w.tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: testenv.Scaled(30 * time.Second)}
}

// sae is an SAE with its own certificate and an etsi/client for each
// node of every site.
type sae struct {
	id string
	at map[*tnode]*client.Client
}

func (w *world) sae(id string) *sae {
	w.tb.Helper()
	leaf, err := w.ca.IssueSAE(id)
	if err != nil {
		w.tb.Fatal(err)
	}
	cert, err := leaf.TLS()
	if err != nil {
		w.tb.Fatal(err)
	}
	s := &sae{id: id, at: map[*tnode]*client.Client{}}
	for _, site := range w.sites {
		for _, n := range site.nodes {
			c, err := client.New(n.srv.URL, pki.ClientConfig(cert, w.pool), client.Options{Timeout: testenv.Scaled(30 * time.Second)})
			if err != nil {
				w.tb.Fatal(err)
			}
			w.tb.Cleanup(c.Close)
			s.at[n] = c
		}
	}
	return s
}

// on is the SAE's client for node n.
func (s *sae) on(n *tnode) *client.Client { return s.at[n] }

// refusal is the KME's refusal err carries (zero when there is none).
func refusal(err error) client.Error {
	var e *client.Error
	if errors.As(err, &e) {
		return *e
	}
	return client.Error{}
}

// kill crashes the node: its server closes, its store stops and is cut
// off from the rest of the site.
func (n *tnode) kill() {
	if n.dead.Swap(true) {
		return
	}
	n.srv.CloseClientConnections()
	n.srv.Close()
	n.site.c.Crash(n.name)
	if n.kme != nil {
		n.kme.Close()
	}
}

func (s *tsite) leader() *tnode {
	for _, n := range s.nodes {
		if !n.dead.Load() && n.store.IsLeader() {
			return n
		}
	}
	return nil
}

func (s *tsite) waitLeader(tb testing.TB) *tnode {
	tb.Helper()
	var l *tnode
	testenv.WaitFor(tb, "a leader at site "+s.id, func() bool { l = s.leader(); return l != nil })
	return l
}

// follower returns the i-th live follower, or the leader when there are
// not that many.
func (s *tsite) follower(i int) *tnode {
	for _, n := range s.nodes {
		if !n.dead.Load() && !n.store.IsLeader() {
			if i == 0 {
				return n
			}
			i--
		}
	}
	for _, n := range s.nodes {
		if !n.dead.Load() {
			return n
		}
	}
	return nil
}

// ---------------------------------------------------------------- setup helpers

func (w *world) connection(source, target, master, slave string) etsi.ConnectionInfo {
	return etsi.ConnectionInfo{
		SourceKME: source, TargetKME: target, MasterSAE: master, SlaveSAE: slave,
		KeySize: 256, MaxKeyCount: 100000, MaxKeyPerRequest: 128, MaxSAEIDCount: 4,
		MinKeySize: 64, MaxKeySize: 4096,
	}
}

// register registers c through a follower of the given site.
func (w *world) register(ctx context.Context, at string, c etsi.ConnectionInfo) {
	w.tb.Helper()
	n := w.sites[at].follower(0)
	if err := n.kme.RegisterConnection(ctx, c); err != nil {
		w.tb.Fatalf("register %s→%s: %v", c.MasterSAE, c.SlaveSAE, err)
	}
}

// importBits imports a random block of nBytes through a node of site at.
func (w *world) importBits(ctx context.Context, at, master, slave string, nBytes int) {
	w.tb.Helper()
	bits := make([]byte, nBytes)
	rand.Read(bits)
	n := w.sites[at].follower(0)
	if err := n.kme.ImportBlock(ctx, master, slave, newUUID(), bits); err != nil {
		w.tb.Fatalf("import: %v", err)
	}
}

func (w *world) connStatus(ctx context.Context, site, master, slave string) raftstore.ConnectionStatus {
	w.tb.Helper()
	l := w.sites[site].waitLeader(w.tb)
	cs, err := l.store.Connection(ctx, master, slave)
	if err != nil {
		w.tb.Fatalf("status at %s: %v", site, err)
	}
	return cs
}
