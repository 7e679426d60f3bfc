package pki

import (
	"crypto/x509"
	"encoding/pem"
	"net/url"
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

// TestMoreThanOneRoleIsRefused: a certificate carrying more than one role
// identity (sae:, kme:, kme-admin:) passes as none of them; one identity, or
// the same one twice, passes as that role.
func TestMoreThanOneRoleIsRefused(t *testing.T) {
	ca, err := Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	uri := func(s, o string) *url.URL { return &url.URL{Scheme: s, Opaque: o} }
	tests := []struct {
		name     string
		uris     []*url.URL
		sae      string // "" = refused as SAE
		kme      string
		operator string
	}{
		{"sae and kme", []*url.URL{uri("sae", "ghi"), uri("kme", "sender_app")}, "", "", ""},
		{"kme and sae", []*url.URL{uri("kme", "sender_app"), uri("sae", "ghi")}, "", "", ""},
		{"sae and operator", []*url.URL{uri("sae", "ghi"), uri("kme-admin", "sender_app")}, "", "", ""},
		{"kme and operator", []*url.URL{uri("kme", "sender_app"), uri("kme-admin", "sender_app")}, "", "", ""},
		{"two SAEs", []*url.URL{uri("sae", "ghi"), uri("sae", "jkl")}, "", "", ""},
		{"two KMEs", []*url.URL{uri("kme", "sender_app"), uri("kme", "receiver_app")}, "", "", ""},
		{"sae only", []*url.URL{uri("sae", "ghi")}, "ghi", "", ""},
		{"same sae twice", []*url.URL{uri("sae", "ghi"), uri("sae", "ghi")}, "ghi", "", ""},
		{"kme only", []*url.URL{uri("kme", "sender_app")}, "", "sender_app", ""},
		{"operator only", []*url.URL{uri("kme-admin", "sender_app")}, "", "", "sender_app"},
		{"sae and an unrelated URI", []*url.URL{uri("sae", "ghi"), {Scheme: "https", Host: "example.org"}}, "ghi", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := leafTemplate("cn-" + tc.name)
			tmpl.URIs = tc.uris
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
			l, err := ca.issue(tmpl)
			if err != nil {
				t.Fatal(err)
			}
			c := parse(t, l)
			got, err := SAEID(c)
			if tc.sae == "" && err == nil {
				t.Errorf("accepted as SAE %q", got)
			}
			if tc.sae != "" && (err != nil || got != tc.sae) {
				t.Errorf("SAEID = %q, %v; want %q", got, err, tc.sae)
			}
			if got := KMEID(c); got != tc.kme {
				t.Errorf("KMEID = %q, want %q", got, tc.kme)
			}
			if got := OperatorKME(c); got != tc.operator {
				t.Errorf("OperatorKME = %q, want %q", got, tc.operator)
			}
		})
	}
}
