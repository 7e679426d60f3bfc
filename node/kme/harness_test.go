package kme

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"qkdkms/etsi"
	"qkdkms/etsi/pki"
	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
)

// The harness: two (or more) sites of N nodes each, in process. Each node
// is a raftstore.Store on raft's in-memory transport (with its bolt log
// store on disk), a KME, and an httptest TLS server with real certificates
// from etsi/pki serving the ETSI API and the internal endpoints.

type tnode struct {
	name  string
	site  *tsite
	trans *raft.InmemTransport
	store *raftstore.Store
	kme   *KME
	tsite *timingSite
	srv   *httptest.Server
	h     atomic.Pointer[http.Handler]
	dead  atomic.Bool
}

type tsite struct {
	id    string
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
	urls  sync.Map // raft address → https base URL
	log   *slog.Logger
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

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newWorld(tb testing.TB, opts worldOpts, siteIDs ...string) *world {
	tb.Helper()
	ca, err := pki.Init(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	w := &world{tb: tb, ca: ca, pool: ca.Pool(), sites: map[string]*tsite{}}
	if opts.quiet {
		w.log = slog.New(slog.DiscardHandler)
	} else {
		w.log = slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	for _, id := range siteIDs {
		w.sites[id] = &tsite{id: id}
	}
	// Servers first, so every site knows its peers' URLs.
	for _, id := range siteIDs {
		s := w.sites[id]
		for i := 0; i < opts.nodes; i++ {
			n := &tnode{name: fmt.Sprintf("%s-n%d", id, i), site: s}
			_, n.trans = raft.NewInmemTransport("")
			leaf, err := ca.IssueNode(n.name, id, nil)
			if err != nil {
				tb.Fatal(err)
			}
			cert, err := leaf.TLS()
			if err != nil {
				tb.Fatal(err)
			}
			n.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				h := n.h.Load()
				if h == nil {
					http.Error(rw, "starting", http.StatusServiceUnavailable)
					return
				}
				(*h).ServeHTTP(rw, r)
			}))
			n.srv.TLS = pki.ServerConfig(cert, w.pool)
			n.srv.TLS.ClientAuth = tls.VerifyClientCertIfGiven
			n.srv.StartTLS()
			w.urls.Store(string(n.trans.LocalAddr()), n.srv.URL)
			s.nodes = append(s.nodes, n)
			tb.Cleanup(n.kill)
		}
		for _, a := range s.nodes {
			for _, b := range s.nodes {
				if a != b {
					a.trans.Connect(b.trans.LocalAddr(), b.trans)
				}
			}
		}
	}
	for _, id := range siteIDs {
		s := w.sites[id]
		kek := make([]byte, raftstore.KEKSize)
		rand.Read(kek)
		var servers []raft.Server
		for _, n := range s.nodes {
			servers = append(servers, raft.Server{ID: raft.ServerID(n.name), Address: n.trans.LocalAddr(), Suffrage: raft.Voter})
		}
		peers := map[string][]string{}
		for pid, ps := range w.sites {
			if pid == id {
				continue
			}
			for _, n := range ps.nodes {
				peers[pid] = append(peers[pid], n.srv.URL)
			}
		}
		for _, n := range s.nodes {
			hb, el, lease := testenv.Scaled(200*time.Millisecond), testenv.Scaled(200*time.Millisecond), testenv.Scaled(100*time.Millisecond)
			if opts.raftDefaults {
				hb, el, lease = 0, 0, 0
			}
			st, err := raftstore.Open(context.Background(), raftstore.Config{
				NodeID:             n.name,
				DataDir:            tb.TempDir(),
				Transport:          n.trans,
				KEK:                kek,
				Bootstrap:          servers,
				Logger:             slog.New(slog.DiscardHandler), // raft's connection errors after kills are noise here
				NoSync:             opts.noSync,
				HeartbeatTimeout:   hb,
				ElectionTimeout:    el,
				LeaderLeaseTimeout: lease,
				CommitTimeout:      5 * time.Millisecond,
				RaftLogLevel:       "error",
			})
			if err != nil {
				tb.Fatal(err)
			}
			n.store = st
			var site raftstore.Site = st
			if opts.timing {
				n.tsite = &timingSite{Site: st}
				site = n.tsite
			}
			hc := w.client(n.name, id)
			if n.tsite != nil {
				hc.Transport = timingRT{hc.Transport, n.tsite}
			}
			n.kme = New(Config{
				KMEID:      id,
				Site:       site,
				Peers:      peers,
				HTTPClient: hc,
				ResolveAddr: func(a string) string {
					if u, ok := w.urls.Load(a); ok {
						return u.(string)
					}
					return a
				},
				Logger: w.log.With("node", n.name),
			})
			h := n.handler()
			n.h.Store(&h)
		}
	}
	for _, s := range w.sites {
		s.waitLeader(tb)
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

// sae is an SAE client with its own certificate.
type sae struct {
	id string
	c  *http.Client
}

func (w *world) sae(id string) *sae {
	leaf, err := w.ca.IssueSAE(id)
	if err != nil {
		w.tb.Fatal(err)
	}
	return &sae{id: id, c: w.httpClient(leaf)}
}

func (n *tnode) kill() {
	if n.dead.Swap(true) {
		return
	}
	n.srv.CloseClientConnections()
	n.srv.Close()
	for _, o := range n.site.nodes {
		o.trans.Disconnect(n.trans.LocalAddr())
	}
	n.trans.DisconnectAll()
	if n.store != nil {
		n.store.Close()
	}
	if n.kme != nil {
		n.kme.Close()
	}
}

func (s *tsite) leader() *tnode {
	for _, n := range s.nodes {
		if !n.dead.Load() && n.store != nil && n.store.IsLeader() {
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

// ---------------------------------------------------------------- ETSI calls

type keyObj struct {
	KeyID string `json:"key_ID"`
	Key   string `json:"key"`
}

type container struct {
	Keys []keyObj `json:"keys"`
}

type apiErr struct {
	status int
	body   string
}

func (e *apiErr) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.body) }

func (s *sae) do(ctx context.Context, method, url string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &apiErr{status: resp.StatusCode, body: string(data)}
	}
	return json.Unmarshal(data, out)
}

func (s *sae) enc(ctx context.Context, n *tnode, slave string, req map[string]any) (container, error) {
	var c container
	err := s.do(ctx, http.MethodPost, n.srv.URL+"/api/v1/keys/"+slave+"/enc_keys", req, &c)
	return c, err
}

func (s *sae) dec(ctx context.Context, n *tnode, master string, ids ...string) (container, error) {
	var c container
	objs := make([]map[string]string, len(ids))
	for i, id := range ids {
		objs[i] = map[string]string{"key_ID": id}
	}
	err := s.do(ctx, http.MethodPost, n.srv.URL+"/api/v1/keys/"+master+"/dec_keys", map[string]any{"key_IDs": objs}, &c)
	return c, err
}

func (s *sae) status(ctx context.Context, n *tnode, slave string) (etsi.Status, error) {
	var st etsi.Status
	err := s.do(ctx, http.MethodGet, n.srv.URL+"/api/v1/keys/"+slave+"/status", nil, &st)
	return st, err
}

func statusOfErr(err error) int {
	if e, ok := err.(*apiErr); ok {
		return e.status
	}
	return 0
}

func decodeKey(tb testing.TB, k keyObj) []byte {
	b, err := base64.StdEncoding.DecodeString(k.Key)
	if err != nil {
		tb.Fatalf("key %s: %v", k.KeyID, err)
	}
	return b
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
