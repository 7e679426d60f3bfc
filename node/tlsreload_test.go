package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/etsi/pki"
	"qkdkms/plugins/testenv"
)

// servedSerial is the serial of the certificate a new handshake with addr
// sees.
func servedSerial(t *testing.T, p *testPKI, addr string) *big.Int {
	t.Helper()
	crt, key := p.operator(t, "site_a")
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, p.clientTLS(t, crt, key))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

func certSerial(t *testing.T, path string) *big.Int {
	t.Helper()
	c, err := pki.LoadCert(path)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// probeServer is an HTTPS server with a certificate of site_a that records
// the serial of each client certificate it sees.
func probeServer(t *testing.T, p *testPKI, name string) (*httptest.Server, *atomic.Pointer[big.Int]) {
	t.Helper()
	crt, key := p.node(t, "site_a", name)
	cert, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	var seen atomic.Pointer[big.Int]
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.TLS.PeerCertificates[0].SerialNumber)
	}))
	srv.TLS = pki.ServerConfig(cert, p.ca.Pool())
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, &seen
}

// TestTLSRotationUnderLoad: the leader of a 3-node site gets a new
// certificate while SAEs call status on every node (each call a new
// handshake; followers forward to the leader) and an operator lists the
// servers through a follower. The files are rewritten in place, the
// certificate before the key, as an operator's cp would; the poll picks
// them up. No request fails, a new handshake sees the new serial, and the
// leader's own dials present it (issue 13 item 8; node/CONFIG.md, Rotation
// and revocation).
func TestTLSRotationUnderLoad(t *testing.T) {
	p := newTestPKI(t)
	a := allocSite(t, p, "site_a", 3)
	b := allocSite(t, p, "site_b", 1)
	a.tlsReload = testenv.Scaled(50 * time.Millisecond)
	a.raftOverTLS = true // Raft's connections live through the rotation too
	a.boot(map[string][]string{"site_b": b.allAddrs()})
	b.boot(map[string][]string{"site_a": a.allAddrs()})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b.leader()
	follower := a.follower()
	if err := follower.services.kme.RegisterConnection(ctx, etsi.ConnectionInfo{
		SourceKME: "site_a", TargetKME: "site_b", MasterSAE: "alice", SlaveSAE: "bob",
		KeySize: 256, MaxKeyCount: 10, MaxKeyPerRequest: 1, MinKeySize: 64, MaxKeySize: 1024,
	}); err != nil {
		t.Fatal(err)
	}
	leader := a.leader()

	alice := newSAE(t, p, "alice")
	alice.http.Transport.(*http.Transport).DisableKeepAlives = true // every call a handshake
	admin := p.adminClient(t, "site_a", follower.Addr())

	var ok atomic.Int64
	var mu sync.Mutex
	var failures []string
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, n := range a.live() {
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := alice.http.Get("https://" + addr + "/api/v1/keys/bob/status")
				if err != nil {
					fail("status at %s: %v", addr, err)
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					fail("status at %s: %d", addr, resp.StatusCode)
					continue
				}
				ok.Add(1)
			}
		}(n.Addr())
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := admin.Servers(ctx); err != nil {
				fail("servers through %s: %v", follower.ID(), err)
				continue
			}
			ok.Add(1)
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()

	testenv.WaitFor(t, "50 calls before the rotation", func() bool { return ok.Load() >= 50 })
	crt, key := p.node(t, "site_a", leader.ID())
	oldSerial := certSerial(t, crt)
	if got := servedSerial(t, p, leader.Addr()); got.Cmp(oldSerial) != 0 {
		t.Fatalf("before rotation %s serves serial %x, want %x", leader.ID(), got, oldSerial)
	}
	fresh, err := p.ca.IssueNode(leader.ID(), "site_a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crt, fresh.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, fresh.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	newSerial := certSerial(t, crt)
	testenv.WaitFor(t, "a new handshake with "+leader.ID()+" to see the new certificate", func() bool {
		return servedSerial(t, p, leader.Addr()).Cmp(newSerial) == 0
	})
	atRotation := ok.Load()
	testenv.WaitFor(t, "50 more calls after the rotation", func() bool { return ok.Load() >= atRotation+50 })

	// The leader's node-to-node dials present the new certificate too.
	probe, seen := probeServer(t, p, "probe")
	resp, err := leader.siteClient.Get(probe.URL)
	if err != nil {
		t.Fatalf("site client of %s: %v", leader.ID(), err)
	}
	resp.Body.Close()
	if got := seen.Load(); got == nil || got.Cmp(newSerial) != 0 {
		t.Fatalf("%s dialled with serial %x, want the new %x", leader.ID(), got, newSerial)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 {
		t.Fatalf("%d of %d calls failed during the rotation, first: %s", len(failures), int(ok.Load())+len(failures), failures[0])
	}
	t.Logf("%d calls, none failed; %s serves serial %x (was %x)", ok.Load(), leader.ID(), newSerial, oldSerial)
}

// TestTLSRevocation: certificates listed in a rewritten tls.crl_file are
// refused at their next handshake on every ALPN of the port (ETSI/HTTP,
// Raft, QKD link), whatever their role (SAE, operator, node), also when a
// client resumes a TLS session made before; the others keep working. A
// node's own dials refuse a server whose certificate is revoked. A CRL not
// signed by the CA is refused and the previous one stays in force (issue 13
// item 8; node/CONFIG.md, Rotation and revocation).
func TestTLSRevocation(t *testing.T) {
	p := newTestPKI(t)
	crl := filepath.Join(p.dir, pki.CRLFile)
	if _, err := p.ca.Revoke(crl); err != nil { // an empty CRL
		t.Fatal(err)
	}
	site := allocSite(t, p, "site_a", 1)
	site.crlFile = crl
	site.raftOverTLS = true // the Raft port's handshakes are checked too
	site.boot(nil)
	n := site.leader()

	sae := func(id string) (string, string) {
		newSAE(t, p, id)
		return filepath.Join(p.dir, id+".crt"), filepath.Join(p.dir, id+".key")
	}
	aliceCrt, aliceKey := sae("alice")
	bobCrt, bobKey := sae("bob")
	opCrt, opKey := p.operator(t, "site_a")
	n8Crt, n8Key := p.node(t, "site_a", "n8")
	n9Crt, n9Key := p.node(t, "site_a", "n9")

	// TLS 1.2, so that a refused client certificate fails the client's
	// Handshake itself (in TLS 1.3 the server's verdict comes after it).
	handshake := func(crt, key, alpn string) error {
		cfg := p.clientTLS(t, crt, key)
		cfg.MaxVersion = tls.VersionTLS12
		if alpn != "" {
			cfg.NextProtos = []string{alpn}
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", n.Addr(), cfg)
		if err == nil {
			c.Close()
		}
		return err
	}
	type role struct {
		name     string
		crt, key string
		alpn     string
		revoke   bool
	}
	roles := []role{
		{"SAE alice (revoked)", aliceCrt, aliceKey, "", true},
		{"SAE bob", bobCrt, bobKey, "", false},
		{"operator (revoked)", opCrt, opKey, "http/1.1", true},
		{"node n9 on Raft (revoked)", n9Crt, n9Key, RaftALPN, true},
		{"node n9 on the link (revoked)", n9Crt, n9Key, "qkdkms-link/1", true},
		{"node n8 on Raft", n8Crt, n8Key, RaftALPN, false},
	}
	for _, r := range roles {
		if err := handshake(r.crt, r.key, r.alpn); err != nil {
			t.Fatalf("%s before revocation: %v", r.name, err)
		}
	}

	// Alice, with a TLS 1.3 session cache: her next connection resumes.
	aliceCfg := p.clientTLS(t, aliceCrt, aliceKey)
	aliceCfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	aliceHTTP := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: aliceCfg, DisableKeepAlives: true}}
	bobHTTP := httpClient(p.clientTLS(t, bobCrt, bobKey))
	bobHTTP.Transport.(*http.Transport).DisableKeepAlives = true
	get := func(c *http.Client) error {
		resp, err := c.Get("https://" + n.Addr() + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	for range 2 { // the second one resumes
		if err := get(aliceHTTP); err != nil {
			t.Fatalf("alice before revocation: %v", err)
		}
	}

	var revoke []*x509.Certificate
	for _, r := range roles {
		if r.revoke {
			c, err := pki.LoadCert(r.crt)
			if err != nil {
				t.Fatal(err)
			}
			revoke = append(revoke, c)
		}
	}
	n8, err := pki.LoadCert(n8Crt)
	if err != nil {
		t.Fatal(err)
	}
	probe, _ := probeServer(t, p, "n7")
	n7, err := pki.LoadCert(filepath.Join(p.dir, "site_a-n7.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ca.Revoke(crl, append(revoke, n7)...); err != nil {
		t.Fatal(err)
	}
	if err := n.ReloadTLS(); err != nil { // what SIGHUP does
		t.Fatalf("reload: %v", err)
	}

	for _, r := range roles {
		err := handshake(r.crt, r.key, r.alpn)
		if r.revoke && err == nil {
			t.Errorf("%s: handshake succeeded after revocation", r.name)
		}
		if !r.revoke && err != nil {
			t.Errorf("%s: %v", r.name, err)
		}
	}
	if err := get(aliceHTTP); err == nil {
		t.Error("alice resumed a TLS session after revocation")
	}
	if err := get(bobHTTP); err != nil {
		t.Errorf("bob after alice's revocation: %v", err)
	}
	// The node's own dials: a server with a revoked certificate is refused.
	if resp, err := n.siteClient.Get(probe.URL); err == nil {
		resp.Body.Close()
		t.Error("the node's site client accepted a server whose certificate is revoked")
	} else if !errors.Is(err, ErrRevoked) {
		t.Errorf("site client to a revoked server: %v, want ErrRevoked", err)
	}

	// A CRL of another CA is refused; the previous one stays in force.
	other, err := pki.Init(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	bad, err := other.CRL([]*big.Int{n8.SerialNumber}, 99)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crl, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.ReloadTLS(); err == nil || !strings.Contains(err.Error(), "not signed by any CA") {
		t.Errorf("reload of a foreign CRL: %v, want refused", err)
	}
	if err := handshake(aliceCrt, aliceKey, ""); err == nil {
		t.Error("alice admitted after a refused CRL reload")
	}
	if err := handshake(n8Crt, n8Key, RaftALPN); err != nil {
		t.Errorf("n8 refused by a CRL that was not loaded: %v", err)
	}
}
