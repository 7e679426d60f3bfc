package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"qkdkms/etsi/pki"
)

// ErrRevoked: a peer's certificate is listed in tls.crl_file.
var ErrRevoked = errors.New("node: certificate revoked")

// tlsMaterial is one consistent set of tls.ca, tls.cert/tls.key and
// tls.crl_file. It is never modified once loaded; a reload swaps in a new
// one (node/CONFIG.md, Rotation and revocation).
type tlsMaterial struct {
	cert    *tls.Certificate // Leaf set
	pool    *x509.CertPool
	revoked map[string]bool // RawIssuer + "/" + hex serial
	sum     [32]byte        // of the four files' contents
	server  *tls.Config     // what GetConfigForClient hands out
}

// isRevoked reports whether the CRL lists c.
func (m *tlsMaterial) isRevoked(c *x509.Certificate) bool {
	return m.revoked[revocationKey(c.RawIssuer, c.SerialNumber.Text(16))]
}

func revocationKey(rawIssuer []byte, serialHex string) string {
	return string(rawIssuer) + "/" + serialHex
}

// checkPeer is every handshake's own check, on the server and the client
// side: the peer's certificate is not revoked, and a resumed session (whose
// chain was verified when it was first made, perhaps against a CA bundle
// since replaced) still chains to the current bundle.
func (m *tlsMaterial) checkPeer(st tls.ConnectionState, usage x509.ExtKeyUsage) error {
	if len(st.PeerCertificates) == 0 {
		return nil // no certificate: RequireAndVerifyClientCert refuses it already
	}
	leaf := st.PeerCertificates[0]
	if m.isRevoked(leaf) {
		return fmt.Errorf("%w: serial %s (%s)", ErrRevoked, leaf.SerialNumber.Text(16), leaf.Subject.CommonName)
	}
	if st.DidResume {
		inter := x509.NewCertPool()
		for _, c := range st.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return fmt.Errorf("node: resumed session: certificate no longer verifies against tls.ca: %w", err)
		}
	}
	return nil
}

// tlsReloader holds the node's current TLS material and reloads it on
// SIGHUP (Node.ReloadTLS) and when the files' contents change (polled every
// tls.reload_interval). Every accepted handshake takes the current
// material through GetConfigForClient, every dial builds its config from
// it, so a rotated certificate, CA bundle or CRL applies from the next
// handshake on; established connections are not cut.
type tlsReloader struct {
	files  TLSFiles
	kmeID  string
	protos []string // server ALPN
	logger *slog.Logger

	mu         sync.Mutex // serialises reloads
	cur        atomic.Pointer[tlsMaterial]
	failedSum  [32]byte // last contents that failed to load (logged once)
	reloadsOK  atomic.Uint64
	reloadsErr atomic.Uint64

	stopOnce sync.Once
	stopCh   chan struct{}
	wg       sync.WaitGroup
}

func newTLSReloader(files TLSFiles, kmeID string, protos []string, logger *slog.Logger) (*tlsReloader, error) {
	r := &tlsReloader{files: files, kmeID: kmeID, protos: protos, logger: logger, stopCh: make(chan struct{})}
	if _, err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// reload reads the four files and, when their contents changed and form a
// valid set, makes them current. It reports whether anything changed. On
// an error the old material stays in use.
func (r *tlsReloader) reload() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	raw, sum, err := r.read()
	if err != nil {
		return false, r.failed(sum, err)
	}
	if old := r.cur.Load(); old != nil && old.sum == sum {
		return false, nil
	}
	m, err := r.parse(raw)
	if err != nil {
		return false, r.failed(sum, err)
	}
	m.sum = sum
	old := r.cur.Swap(m)
	r.failedSum = [32]byte{}
	r.reloadsOK.Add(1)
	if old != nil {
		r.logger.Info("TLS material reloaded", "serial", m.cert.Leaf.SerialNumber.Text(16),
			"not_after", m.cert.Leaf.NotAfter.UTC().Format(time.RFC3339), "revoked", len(m.revoked),
			"old_serial", old.cert.Leaf.SerialNumber.Text(16))
	}
	if m.isRevoked(m.cert.Leaf) {
		r.logger.Error("this node's own certificate is listed in tls.crl_file: peers refuse it; rotate tls.cert",
			"serial", m.cert.Leaf.SerialNumber.Text(16))
	}
	return true, nil
}

func (r *tlsReloader) failed(sum [32]byte, err error) error {
	r.reloadsErr.Add(1)
	if r.cur.Load() != nil && sum != r.failedSum {
		r.failedSum = sum
		r.logger.Warn("TLS reload failed; the previous certificate, CA bundle and CRL stay in use", "err", err)
	}
	return err
}

type tlsFiles struct{ ca, cert, key, crl []byte }

// read reads the files and hashes their contents (length-prefixed, so no
// two different sets hash alike).
func (r *tlsReloader) read() (tlsFiles, [32]byte, error) {
	var f tlsFiles
	h := sha256.New()
	for _, x := range []struct {
		field, path string
		dst         *[]byte
	}{{"tls.ca", r.files.CA, &f.ca}, {"tls.cert", r.files.Cert, &f.cert}, {"tls.key", r.files.Key, &f.key}, {"tls.crl_file", r.files.CRLFile, &f.crl}} {
		if x.path == "" {
			continue
		}
		if x.dst == &f.key {
			// The rule of pki.LoadKeyPair, which the node applies at start.
			fi, err := os.Stat(x.path)
			if err != nil {
				return f, [32]byte{}, fmt.Errorf("node: tls.key: %w", err)
			}
			if fi.Mode().Perm()&0o077 != 0 {
				return f, [32]byte{}, fmt.Errorf("node: tls.key: %w: %s has mode %#o, must be 0600 or stricter",
					pki.ErrKeyFileMode, x.path, fi.Mode().Perm())
			}
		}
		b, err := os.ReadFile(x.path)
		if err != nil {
			return f, [32]byte{}, fmt.Errorf("node: %s: %w", x.field, err)
		}
		*x.dst = b
		_ = binary.Write(h, binary.BigEndian, uint64(len(b)))
		h.Write(b)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return f, sum, nil
}

func (r *tlsReloader) parse(f tlsFiles) (*tlsMaterial, error) {
	cas, err := parseCerts(f.ca)
	if err != nil {
		return nil, fmt.Errorf("node: tls.ca %s: %w", r.files.CA, err)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("node: tls.ca %s: no certificates", r.files.CA)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	cert, err := tls.X509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("node: tls.cert/tls.key: %w", err)
	}
	if got := pki.KMEID(cert.Leaf); got != r.kmeID {
		return nil, fmt.Errorf("%w: tls.cert %s carries KME identity %q, want kme:%s", ErrConfig, r.files.Cert, got, r.kmeID)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("%w: tls.cert is not a server certificate of tls.ca: %w", ErrConfig, err)
	}
	revoked, err := parseCRL(f.crl, cas, r.logger)
	if err != nil {
		return nil, fmt.Errorf("node: tls.crl_file %s: %w", r.files.CRLFile, err)
	}
	m := &tlsMaterial{cert: &cert, pool: pool, revoked: revoked}
	m.server = pki.ServerConfig(cert, pool)
	m.server.NextProtos = r.protos
	m.server.VerifyConnection = func(st tls.ConnectionState) error {
		// The material current now, not the one this config came from:
		// a CRL rewritten during a long handshake still applies.
		return r.cur.Load().checkPeer(st, x509.ExtKeyUsageClientAuth)
	}
	return m, nil
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// parseCRL reads the "X509 CRL" PEM blocks of b. Each must be signed by a
// CA of the bundle; an expired one (NextUpdate passed) still applies and is
// logged, since dropping it would readmit what it revokes.
func parseCRL(b []byte, cas []*x509.Certificate, logger *slog.Logger) (map[string]bool, error) {
	revoked := map[string]bool{}
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block %q, want X509 CRL", blk.Type)
		}
		n++
		rl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			return nil, err
		}
		var signer *x509.Certificate
		for _, ca := range cas {
			if bytes.Equal(ca.RawSubject, rl.RawIssuer) && rl.CheckSignatureFrom(ca) == nil {
				signer = ca
				break
			}
		}
		if signer == nil {
			return nil, errors.New("a CRL is not signed by any CA of tls.ca")
		}
		if !rl.NextUpdate.IsZero() && time.Now().After(rl.NextUpdate) {
			logger.Warn("tls.crl_file is past its next update; still applied", "next_update", rl.NextUpdate.UTC().Format(time.RFC3339))
		}
		for _, e := range rl.RevokedCertificateEntries {
			revoked[revocationKey(rl.RawIssuer, e.SerialNumber.Text(16))] = true
		}
	}
	if len(bytes.TrimSpace(b)) > 0 && n == 0 {
		return nil, errors.New("no X509 CRL PEM block")
	}
	return revoked, nil
}

// serverConfig is the listener's config: every handshake gets the current
// material's config.
func (r *tlsReloader) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.cur.Load().server, nil
		},
	}
}

// clientConfig is the config of one dial to serverName: the current node
// certificate and CA bundle, the CRL, then verify (a role check such as
// requireKME; nil for none).
func (r *tlsReloader) clientConfig(serverName string, protos []string, verify func(tls.ConnectionState) error) *tls.Config {
	m := r.cur.Load()
	cfg := pki.ClientConfig(*m.cert, m.pool)
	cfg.ServerName = serverName
	cfg.NextProtos = protos
	cfg.VerifyConnection = func(st tls.ConnectionState) error {
		if err := r.cur.Load().checkPeer(st, x509.ExtKeyUsageServerAuth); err != nil {
			return err
		}
		if verify != nil {
			return verify(st)
		}
		return nil
	}
	return cfg
}

// dialTLS is an http.Transport DialTLSContext over dial that builds each
// connection's config with clientConfig.
func (r *tlsReloader) dialTLS(dial func(ctx context.Context, network, addr string) (net.Conn, error),
	verify func(tls.ConnectionState) error) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("node: dial %s: %w", addr, err)
		}
		raw, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		defer cancel()
		tc := tls.Client(raw, r.clientConfig(host, nil, verify))
		if err := tc.HandshakeContext(hctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("node: TLS handshake with %s: %w", addr, err)
		}
		return tc, nil
	}
}

// watch polls the files every interval until stop.
func (r *tlsReloader) watch(interval time.Duration) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-r.stopCh:
				return
			case <-t.C:
				_, _ = r.reload() // failures are logged by reload
			}
		}
	}()
}

func (r *tlsReloader) stop() {
	r.stopOnce.Do(func() { close(r.stopCh) })
	r.wg.Wait()
}

var (
	descTLSReloads  = prometheus.NewDesc("qkdkms_tls_reloads_total", "Loads of tls.ca, tls.cert/tls.key and tls.crl_file, by result (ok: new material in use; error: the old stays).", []string{"result"}, nil)
	descTLSNotAfter = prometheus.NewDesc("qkdkms_tls_cert_not_after_seconds", "Expiry (Unix seconds) of the node certificate in use.", nil, nil)
	descTLSRevoked  = prometheus.NewDesc("qkdkms_tls_crl_revoked", "Certificates listed in the CRL in use.", nil, nil)
)

func (r *tlsReloader) Describe(ch chan<- *prometheus.Desc) {
	ch <- descTLSReloads
	ch <- descTLSNotAfter
	ch <- descTLSRevoked
}

func (r *tlsReloader) Collect(ch chan<- prometheus.Metric) {
	m := r.cur.Load()
	ch <- prometheus.MustNewConstMetric(descTLSReloads, prometheus.CounterValue, float64(r.reloadsOK.Load()), "ok")
	ch <- prometheus.MustNewConstMetric(descTLSReloads, prometheus.CounterValue, float64(r.reloadsErr.Load()), "error")
	ch <- prometheus.MustNewConstMetric(descTLSNotAfter, prometheus.GaugeValue, float64(m.cert.Leaf.NotAfter.Unix()))
	ch <- prometheus.MustNewConstMetric(descTLSRevoked, prometheus.GaugeValue, float64(len(m.revoked)))
}

// ReloadTLS reloads tls.ca, tls.cert/tls.key and tls.crl_file now (what
// SIGHUP does in `qkdkms serve`). On an error the previous material stays
// in use.
func (n *Node) ReloadTLS() error {
	changed, err := n.tlsr.reload()
	if err != nil {
		return err
	}
	if !changed {
		n.logger.Info("TLS reload: files unchanged")
	}
	return nil
}
