package pki

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
)

func TestIssueOperator(t *testing.T) {
	ca, err := Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueOperator("alice", "sender_app")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(leaf.CertPEM)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got := OperatorKME(cert); got != "sender_app" {
		t.Errorf("OperatorKME = %q, want sender_app", got)
	}
	if got := KMEID(cert); got != "" {
		t.Errorf("operator certificate carries a node identity %q", got)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify as client: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("operator certificate verifies as a server certificate")
	}
	node, err := ca.IssueNode("n1", "sender_app", nil)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ = pem.Decode(node.CertPEM)
	nc, _ := x509.ParseCertificate(blk.Bytes)
	if OperatorKME(nc) != "" {
		t.Error("node certificate passes as operator")
	}
	if _, err := ca.IssueOperator("a:b", "sender_app"); err == nil {
		t.Error("name with ':' accepted")
	}
}
