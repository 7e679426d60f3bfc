package pki

import (
	"crypto/tls"
	"net"
	"testing"
)

// TestServerConfigAEADOnly: a TLS 1.2 client that offers only a CBC or SHA-1
// suite is refused by ServerConfig; AEAD suites and TLS 1.3 are accepted.
func TestServerConfigAEADOnly(t *testing.T) {
	dir := t.TempDir()
	ca, err := Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.IssueNode("n1", "sender_app", nil)
	if err != nil {
		t.Fatal(err)
	}
	sae, err := ca.IssueSAE("ghi")
	if err != nil {
		t.Fatal(err)
	}
	nodeCert, err := node.TLS()
	if err != nil {
		t.Fatal(err)
	}
	saeCert, err := sae.TLS()
	if err != nil {
		t.Fatal(err)
	}
	server := ServerConfig(nodeCert, ca.Pool())
	tests := []struct {
		name   string
		max    uint16
		suites []uint16
		ok     bool
	}{
		{"tls12 ecdhe-ecdsa aes-cbc sha1", tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}, false},
		{"tls12 ecdhe-ecdsa aes-cbc sha256", tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}, false},
		{"tls12 ecdhe-ecdsa aes256-cbc sha1", tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}, false},
		{"tls12 ecdhe-ecdsa aes-gcm", tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}, true},
		{"tls12 ecdhe-ecdsa chacha20", tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}, true},
		{"tls13", tls.VersionTLS13, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := ClientConfig(saeCert, ca.Pool())
			client.ServerName = "n1"
			client.MaxVersion = tc.max
			client.CipherSuites = tc.suites
			err := handshake(t, server, client)
			if tc.ok && err != nil {
				t.Fatalf("handshake refused: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("handshake with a non-AEAD suite accepted")
			}
		})
	}
	for _, id := range ClientConfig(saeCert, ca.Pool()).CipherSuites {
		if s := tls.CipherSuiteName(id); !contains(AEADSuites, id) {
			t.Errorf("client offers %s", s)
		}
	}
}

func contains(list []uint16, id uint16) bool {
	for _, v := range list {
		if v == id {
			return true
		}
	}
	return false
}

// handshake runs one TLS handshake over an in-memory pipe and returns the
// client's error.
func handshake(t *testing.T, server, client *tls.Config) error {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() {
		s := tls.Server(a, server)
		err := s.Handshake()
		if err != nil {
			a.Close()
		}
		done <- err
	}()
	c := tls.Client(b, client)
	cerr := c.Handshake()
	if cerr == nil {
		// the server verifies the client's certificate after the client
		// finished; its verdict is what counts.
		cerr = <-done
		return cerr
	}
	b.Close()
	<-done
	return cerr
}

// TestServerConfigNoClientCertificate: a client without a certificate gets
// no HTTP answer at all but a TLS alert — certificate_required under TLS
// 1.3, handshake_failure under TLS 1.2 (README, etsi/API.md).
func TestServerConfigNoClientCertificate(t *testing.T) {
	ca, err := Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.IssueNode("n1", "sender_app", nil)
	if err != nil {
		t.Fatal(err)
	}
	nodeCert, err := node.TLS()
	if err != nil {
		t.Fatal(err)
	}
	server := ServerConfig(nodeCert, ca.Pool())
	for _, tc := range []struct {
		version uint16
		alert   string
	}{
		{tls.VersionTLS13, "remote error: tls: certificate required"},
		{tls.VersionTLS12, "remote error: tls: handshake failure"},
	} {
		t.Run(tls.VersionName(tc.version), func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			go func() {
				_ = tls.Server(a, server).Handshake()
				_ = a.Close()
			}()
			c := tls.Client(b, &tls.Config{RootCAs: ca.Pool(), ServerName: "n1", MinVersion: tc.version, MaxVersion: tc.version})
			err := c.Handshake()
			if err == nil { // TLS 1.3: the client finishes first, the alert follows
				_, err = c.Read(make([]byte, 1))
			}
			if err == nil || err.Error() != tc.alert {
				t.Fatalf("err = %v, want %q", err, tc.alert)
			}
		})
	}
}
