package etsi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"qkdkms/etsi"
	"qkdkms/etsi/etsitest"
	"qkdkms/etsi/internal/memkme"
	"qkdkms/etsi/pki"
)

// testLog is a slog handler writing to t.Log and keeping the records.
type testLog struct {
	mu   sync.Mutex
	t    testing.TB
	recs []map[string]any
}

func (l *testLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *testLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *testLog) WithGroup(string) slog.Handler            { return l }
func (l *testLog) Handle(_ context.Context, r slog.Record) error {
	m := map[string]any{"msg": r.Message}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, m)
	return nil
}

func (l *testLog) records() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]map[string]any(nil), l.recs...)
}

type twoSites struct {
	world        *memkme.World
	ca           *pki.CA
	dir          string
	a, b         *httptest.Server
	audit        *testLog
	certs        sync.Map
	noID         tls.Certificate
	harness      etsitest.Harness
	seedA, seedB *httptest.Server
	seedAudit    *testLog
}

// newTwoSites starts two in-memory KMEs, "sender_app" and "receiver_app",
// each behind the ETSI handler on a real mutual-TLS listener and the seed
// handler on plain HTTP.
func newTwoSites(t testing.TB) *twoSites {
	t.Helper()
	ts := &twoSites{world: memkme.NewWorld("sender_app", "receiver_app"), dir: t.TempDir(), audit: &testLog{t: t}, seedAudit: &testLog{t: t}}
	ca, err := pki.Init(ts.dir)
	if err != nil {
		t.Fatal(err)
	}
	ts.ca = ca
	start := func(kme, node string) *httptest.Server {
		leaf, err := ca.IssueNode(node, kme, nil)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := leaf.TLS()
		if err != nil {
			t.Fatal(err)
		}
		h := etsi.NewHandler(ts.world.Site(kme), etsi.Options{Audit: slog.New(ts.audit).With("stream", "audit"), Log: slog.New(ts.audit)})
		srv := httptest.NewUnstartedServer(h)
		srv.TLS = pki.ServerConfig(cert, ca.Pool())
		srv.TLS.ClientAuth = tls.VerifyClientCertIfGiven // JSON 401 for clients without a certificate
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	ts.a, ts.b = start("sender_app", "kme-a1"), start("receiver_app", "kme-b1")
	nodeLeaf, err := ca.IssueNode("kme-a2", "sender_app", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ts.noID, err = nodeLeaf.TLS(); err != nil {
		t.Fatal(err)
	}
	ts.seedA = httptest.NewServer(etsi.NewSeedHandler(ts.world.Site("sender_app"), slog.New(ts.seedAudit)))
	ts.seedB = httptest.NewServer(etsi.NewSeedHandler(ts.world.Site("receiver_app"), slog.New(ts.seedAudit)))
	t.Cleanup(ts.seedA.Close)
	t.Cleanup(ts.seedB.Close)
	ts.harness = etsitest.Harness{
		Master:     etsitest.Site{URL: ts.a.URL, KMEID: "sender_app"},
		Slave:      etsitest.Site{URL: ts.b.URL, KMEID: "receiver_app"},
		RootCAs:    ca.Pool(),
		ClientCert: ts.clientCert,
		Register: func(ctx context.Context, c etsi.ConnectionInfo) error {
			return ts.world.Site(c.SourceKME).RegisterConnection(ctx, c)
		},
		Fill: func(_ context.Context, m, s string, mat []byte) error { return ts.world.Fill(m, s, mat) },
		Levels: func(context.Context) (map[string]int, error) {
			return ts.world.Levels(), nil
		},
		NoIdentityCert: func() (tls.Certificate, error) { return ts.noID, nil },
	}
	return ts
}

func (ts *twoSites) clientCert(sae string) (tls.Certificate, error) {
	if c, ok := ts.certs.Load(sae); ok {
		return c.(tls.Certificate), nil
	}
	leaf, err := ts.ca.IssueSAE(sae)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := leaf.TLS()
	if err != nil {
		return tls.Certificate{}, err
	}
	ts.certs.Store(sae, c)
	return c, nil
}

// TestConformance runs the whole conformance suite against two in-memory
// sites over real HTTPS with real certificates.
func TestConformance(t *testing.T) {
	ts := newTwoSites(t)
	etsitest.Run(t, ts.harness)

	// Audit: one record per call, with identity, never key bits.
	recs := ts.audit.records()
	if len(recs) < 100 {
		t.Fatalf("only %d audit records", len(recs))
	}
	var sawOK, saw401 bool
	for _, r := range recs {
		if r["msg"] != "etsi call" {
			continue
		}
		for _, k := range []string{"call", "sae", "cert_sha256", "path_sae", "status", "outcome", "key_ids"} {
			if _, ok := r[k]; !ok {
				t.Fatalf("audit record without %s: %v", k, r)
			}
		}
		if r["status"] == int64(200) && r["call"] == "enc_keys" && len(r["cert_sha256"].(string)) == 64 {
			sawOK = true
			if ids, _ := r["key_ids"].([]string); len(ids) == 0 {
				t.Errorf("enc_keys audit record without key IDs: %v", r)
			}
		}
		if r["status"] == int64(401) {
			saw401 = true
		}
		for k, v := range r {
			if k == "key" || k == "bits" || strings.Contains(strings.ToLower(k), "key_data") {
				t.Errorf("audit record carries %s=%v", k, v)
			}
		}
	}
	if !sawOK || !saw401 {
		t.Errorf("audit: sawOK=%v saw401=%v", sawOK, saw401)
	}
}

// TestConformanceTwice: the suite can run again against the same system.
func TestConformanceTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	ts := newTwoSites(t)
	etsitest.Run(t, ts.harness)
	etsitest.Run(t, ts.harness)
}

func TestPeerDownBurns(t *testing.T) {
	ts := newTwoSites(t)
	ctx := context.Background()
	c := etsi.ConnectionInfo{SourceKME: "sender_app", TargetKME: "receiver_app", MasterSAE: "ghi", SlaveSAE: "jkl",
		KeySize: 256, MaxKeyCount: 100, MaxKeyPerRequest: 4, MinKeySize: 256, MaxKeySize: 256}
	if err := ts.world.Site("sender_app").RegisterConnection(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := ts.world.Fill("ghi", "jkl", bytes.Repeat([]byte{7}, 256)); err != nil {
		t.Fatal(err)
	}
	cert, _ := ts.clientCert("ghi")
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientConfig(cert, ts.ca.Pool())}}
	ts.world.SetPeerDown(true)
	resp, err := cl.Post(ts.a.URL+"/api/v1/keys/jkl/enc_keys", "application/json", strings.NewReader(`{"number":2}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("enc_keys with the peer down: %d %s", resp.StatusCode, b)
	}
	if ts.world.Burned() != 2 {
		t.Fatalf("burned %d, want 2", ts.world.Burned())
	}
	var e etsi.Error
	if err := json.Unmarshal(b, &e); err != nil || e.Message == "" || e.Details == nil {
		t.Fatalf("503 body %s: %v", b, err)
	}
}
