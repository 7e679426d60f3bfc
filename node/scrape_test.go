package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"qkdkms/raftstore"
)

// issueURI issues a client certificate of the test CA with CN cn and the
// given URI SANs (a scrape identity is not a role `qkdkms certs` knows).
func (p *testPKI) issueURI(t testing.TB, cn string, uris ...string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca.Cert, &key.PublicKey, p.ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	crt, kf := filepath.Join(p.dir, cn+".crt"), filepath.Join(p.dir, cn+".key")
	if err := os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return crt, kf
}

// TestMetricsAccess: /metrics names every connection's SAEs, so only this
// site's nodes and operators and a configured scrape identity read it; an
// SAE (any certificate of the CA, even one named in a connection), a peer
// site's node, another site's operator and an unlisted URI get 403 with a
// JSON error body (issue 13 item 3; node/CONFIG.md, Health and metrics).
func TestMetricsAccess(t *testing.T) {
	p := newTestPKI(t)
	site := allocSite(t, p, "site_a", 1)
	site.scrapeIDs = []string{"metrics:prometheus"}
	site.boot(nil)
	n := site.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Store().RegisterConnection(ctx, raftstore.Connection{
		SourceKME: "site_a", TargetKME: "site_b", MasterSAE: "alice", SlaveSAE: "bob",
		KeySize: 256, MaxKeyCount: 10, MaxKeyPerRequest: 1, MinKeySize: 64, MaxKeySize: 1024,
	}); err != nil {
		t.Fatal(err)
	}

	sae := func(id string) (string, string) {
		l, err := p.ca.IssueSAE(id)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Write(p.dir, id); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(p.dir, id+".crt"), filepath.Join(p.dir, id+".key")
	}
	const perConn = `qkdkms_pool_stored_keys{master="alice",slave="bob"}`
	for _, tc := range []struct {
		name     string
		cert     func() (string, string)
		wantCode int
	}{
		{"operator of the site", func() (string, string) { return p.operator(t, "site_a") }, http.StatusOK},
		{"node of the site", func() (string, string) { return p.node(t, "site_a", "n1") }, http.StatusOK},
		{"configured scrape identity", func() (string, string) { return p.issueURI(t, "prom", "metrics:prometheus") }, http.StatusOK},
		{"SAE of a connection", func() (string, string) { return sae("alice") }, http.StatusForbidden},
		{"fresh SAE", func() (string, string) { return sae("mallory") }, http.StatusForbidden},
		{"node of a peer site", func() (string, string) { return p.node(t, "site_b", "n1") }, http.StatusForbidden},
		{"operator of another site", func() (string, string) { return p.operator(t, "site_b") }, http.StatusForbidden},
		{"unlisted URI", func() (string, string) { return p.issueURI(t, "other", "metrics:other") }, http.StatusForbidden},
		{"scrape URI beside an SAE identity", func() (string, string) {
			return p.issueURI(t, "both", "metrics:prometheus", "sae:both")
		}, http.StatusForbidden},
		{"CN only (an SAE by its CN)", func() (string, string) { return p.issueURI(t, "prometheus") }, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			crt, key := tc.cert()
			resp, err := httpClient(p.clientTLS(t, crt, key)).Get("https://" + n.Addr() + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d, want %d: %.200s", resp.StatusCode, tc.wantCode, body)
			}
			if tc.wantCode == http.StatusOK {
				if !strings.Contains(string(body), perConn) {
					t.Fatalf("metrics lack the per-connection series %s", perConn)
				}
				return
			}
			if strings.Contains(string(body), "alice") || strings.Contains(string(body), "qkdkms_") {
				t.Fatalf("403 body leaks series: %.200s", body)
			}
			var e struct{ Code, Message string }
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q, want JSON", ct)
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Code != CodeForbidden {
				t.Fatalf("body %q: code %q, %v; want JSON with code %q", body, e.Code, err, CodeForbidden)
			}
		})
	}
}
