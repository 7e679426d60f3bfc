package pki

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// TestRevoke: each Revoke adds serials to the CA's CRL with a new number,
// keeps the ones listed before, and refuses a certificate of another CA.
func TestRevoke(t *testing.T) {
	dir := t.TempDir()
	ca, err := Init(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := Init(filepath.Join(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(c *CA, id string) *x509.Certificate {
		l, err := c.IssueSAE(id)
		if err != nil {
			t.Fatal(err)
		}
		tc, err := l.TLS()
		if err != nil {
			t.Fatal(err)
		}
		return tc.Leaf
	}
	alice, bob := leaf(ca, "alice"), leaf(ca, "bob")
	path := filepath.Join(dir, CRLFile)
	read := func() *x509.RevocationList {
		b, err := os.ReadFile(path)
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
		return rl
	}
	for i, tc := range []struct {
		cert     *x509.Certificate
		wantErr  bool
		wantN    int
		wantNumb int64
	}{
		{alice, false, 1, 1},
		{alice, false, 1, 2}, // again: listed once
		{bob, false, 2, 3},
		{leaf(other, "eve"), true, 2, 3},
	} {
		_, err := ca.Revoke(path, tc.cert)
		if (err != nil) != tc.wantErr {
			t.Fatalf("step %d: err %v, want error %v", i, err, tc.wantErr)
		}
		rl := read()
		if len(rl.RevokedCertificateEntries) != tc.wantN || rl.Number.Int64() != tc.wantNumb {
			t.Fatalf("step %d: %d entries, number %v; want %d, %d", i, len(rl.RevokedCertificateEntries), rl.Number, tc.wantN, tc.wantNumb)
		}
	}
	if _, err := other.Revoke(path, leaf(other, "x")); err == nil {
		t.Fatal("another CA rewrote this CA's CRL")
	}
}
