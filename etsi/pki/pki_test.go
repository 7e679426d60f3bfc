package pki

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func parse(t *testing.T, l Leaf) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(l.CertPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIdentitiesAndVerification(t *testing.T) {
	dir := t.TempDir()
	ca, err := Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Init(dir)
	if err != nil || !again.Cert.Equal(ca.Cert) {
		t.Fatalf("second Init must load the same CA: %v", err)
	}
	node, err := ca.IssueNode("n1", "sender_app", []string{"kme1.example", "10.0.0.7"})
	if err != nil {
		t.Fatal(err)
	}
	sae, err := ca.IssueSAE("ghi")
	if err != nil {
		t.Fatal(err)
	}
	nc, sc := parse(t, node), parse(t, sae)
	if got := KMEID(nc); got != "sender_app" {
		t.Fatalf("KMEID = %q", got)
	}
	if _, err := SAEID(nc); err == nil {
		t.Fatal("a node certificate must not pass as an SAE")
	}
	if got, err := SAEID(sc); err != nil || got != "ghi" {
		t.Fatalf("SAEID = %q, %v", got, err)
	}
	if KMEID(sc) != "" {
		t.Fatal("an SAE certificate must not carry a KME ID")
	}
	for _, h := range []string{"127.0.0.1", "localhost", "n1", "kme1.example", "10.0.0.7"} {
		if err := nc.VerifyHostname(h); err != nil {
			t.Errorf("node cert not valid for %s: %v", h, err)
		}
	}
	opts := x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := sc.Verify(opts); err != nil {
		t.Fatalf("SAE cert does not verify as client: %v", err)
	}
	if err := sae.Write(dir, "ghi"); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "ghi.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", st.Mode(), err)
	}
	if _, err := LoadLeaf(dir, "ghi"); err != nil {
		t.Fatal(err)
	}
	if openssl, err := exec.LookPath("openssl"); err == nil {
		if err := node.Write(dir, "n1"); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"n1.crt", "ghi.crt"} {
			out, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(dir, "ca.crt"), filepath.Join(dir, f)).CombinedOutput()
			if err != nil {
				t.Errorf("openssl verify %s: %v: %s", f, err, out)
			}
		}
	}
}

func TestCNFallbackAndBadNames(t *testing.T) {
	ca, err := Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tmpl := leafTemplate("plain-cn")
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	l, err := ca.issue(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := SAEID(parse(t, l)); err != nil || id != "plain-cn" {
		t.Fatalf("CN fallback = %q, %v", id, err)
	}
	for _, bad := range []string{"", "a/b", "a b", "x:y", ".."} {
		if _, err := ca.IssueSAE(bad); err == nil {
			t.Errorf("IssueSAE(%q) accepted", bad)
		}
	}
	op, err := ca.IssueOperator("alice", "sender_app")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := SAEID(parse(t, op)); err == nil {
		t.Fatalf("operator certificate read as SAE %q", id)
	}
	if _, err := l.TLS(); err != nil {
		t.Fatal(err)
	}
}
