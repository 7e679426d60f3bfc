package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"qkdkms/etsi/pki"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestDispatch(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		contains string
	}{
		{nil, 2, "Usage: qkdkms"},
		{[]string{"help"}, 0, "serve"},
		{[]string{"nope"}, 2, `unknown command "nope"`},
		{[]string{"version"}, 0, "qkdkms"},
		{[]string{"version", "x"}, 2, "usage"},
		{[]string{"experiment", "list"}, 2, "run make lab"}, // no qkdkms-lab beside the test binary
		{[]string{"network"}, 2, "usage: qkdkms network status"},
		{[]string{"certs"}, 2, "qkdkms certs init"},
		{[]string{"certs", "sae", "alice"}, 2, "--pki DIR is required"},
		{[]string{"certs", "bogus", "--pki", "x"}, 2, "unknown subcommand"},
		{[]string{"kek"}, 2, "usage: qkdkms kek FILE"},
		{[]string{"join", "--id", "n4"}, 2, "--id and --address are required"},
		{[]string{"servers", "--server", "127.0.0.1:1"}, 2, "need --ca"},
		{[]string{"serve", "--node-id", "n1"}, 2, "kme_id: required"},
		{[]string{"serve", "--bootstrap", "n1"}, 2, "want ID=HOST:PORT"},
		{[]string{"serve", "--config", "/nonexistent.json"}, 2, "nonexistent.json"},
	} {
		code, out, errs := runCmd(tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.contains) {
			t.Errorf("qkdkms %v: code %d, output %q; want %d containing %q", tc.args, code, out+errs, tc.code, tc.contains)
		}
	}
}

func TestCertsAndKEK(t *testing.T) {
	dir := t.TempDir()
	if code, _, errs := runCmd("certs", "init", "--pki", dir, "--kme", "sender_app", "--nodes", "n1,n2", "--host", "kme1.example"); code != 0 {
		t.Fatalf("init: %s", errs)
	}
	if code, _, errs := runCmd("certs", "sae", "alice", "--pki", dir); code != 0 {
		t.Fatalf("sae: %s", errs)
	}
	if code, _, errs := runCmd("certs", "operator", "--pki", dir, "--kme", "sender_app", "ops"); code != 0 {
		t.Fatalf("operator (name after flags): %s", errs)
	}
	ca, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string) *x509.Certificate {
		b, err := os.ReadFile(filepath.Join(dir, name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s does not verify: %v", name, err)
		}
		fi, err := os.Stat(filepath.Join(dir, name+".key"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s.key mode %v, %v", name, fi.Mode(), err)
		}
		return c
	}
	n1 := read("n1")
	if pki.KMEID(n1) != "sender_app" || n1.VerifyHostname("kme1.example") != nil || n1.VerifyHostname("127.0.0.1") != nil || n1.VerifyHostname("localhost") != nil {
		t.Errorf("n1: kme %q, DNS %v, IPs %v", pki.KMEID(n1), n1.DNSNames, n1.IPAddresses)
	}
	if id, err := pki.SAEID(read("alice")); id != "alice" || err != nil {
		t.Errorf("alice SAE ID %q, %v", id, err)
	}
	if pki.OperatorKME(read("ops")) != "sender_app" {
		t.Error("ops is not an operator of sender_app")
	}
	kek := filepath.Join(dir, "site.kek")
	if code, _, errs := runCmd("kek", kek); code != 0 {
		t.Fatalf("kek: %s", errs)
	}
	if fi, err := os.Stat(kek); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kek mode: %v %v", fi, err)
	}
	if code, _, errs := runCmd("kek", kek); code != 1 || !strings.Contains(errs, "exists") {
		t.Errorf("kek overwrite: code %d %q", code, errs)
	}
}

func TestServeFlagsOverrideFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "n1.json")
	os.WriteFile(cfg, []byte(`{"node_id":"n1","kme_id":"a","listen":"127.0.0.1:8443","data_dir":"d",
		"tls":{"ca":"ca","cert":"c","key":"k"},"kek_file":"f","log":{"level":"info"}}`), 0o600)
	f := newServeFlags(&bytes.Buffer{})
	c, err := f.load([]string{"--config", cfg, "--listen", "127.0.0.1:9443", "--kek-env", "KEK",
		"--bootstrap", "n1=127.0.0.1:9443,n2=127.0.0.1:9444", "--peer", "b=127.0.0.1:7443,127.0.0.1:7444", "--log-level", "debug"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9443" || c.Advertise != "127.0.0.1:9443" || c.KEKFile != "" || c.KEKEnv != "KEK" ||
		len(c.Bootstrap) != 2 || len(c.Peers["b"]) != 2 || c.Log.Level != "debug" || c.NodeID != "n1" || c.DataDir != "d" {
		t.Fatalf("config %+v", c)
	}
	os.WriteFile(cfg, []byte(`{"node_id":"n1","bogus":1}`), 0o600)
	if _, err := newServeFlags(&bytes.Buffer{}).load([]string{"--config", cfg}); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("unknown field: %v", err)
	}
}

// TestCertsRevoke: `certs revoke NAME` lists NAME's serial in DIR/crl.pem,
// signed by the CA, keeping earlier entries (node/CONFIG.md, Rotation and
// revocation).
func TestCertsRevoke(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"certs", "init", "--pki", dir},
		{"certs", "sae", "alice", "--pki", dir},
		{"certs", "sae", "bob", "--pki", dir},
		{"certs", "revoke", "alice", "--pki", dir},
		{"certs", "revoke", "bob", "--pki", dir},
	} {
		if code, _, errs := runCmd(args...); code != 0 {
			t.Fatalf("%v: %s", args, errs)
		}
	}
	if code, _, _ := runCmd("certs", "revoke", "nobody", "--pki", dir); code == 0 {
		t.Error("revoking a missing certificate succeeded")
	}
	ca, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, pki.CRLFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	rl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := rl.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, e := range rl.RevokedCertificateEntries {
		listed[e.SerialNumber.String()] = true
	}
	for _, name := range []string{"alice", "bob"} {
		c, err := pki.LoadCert(filepath.Join(dir, name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		if !listed[c.SerialNumber.String()] {
			t.Errorf("%s's serial is not in the CRL", name)
		}
	}
}
