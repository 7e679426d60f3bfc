package pki

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// CRLFile is the name of the CA's certificate revocation list in a PKI
// directory; a node reads it as tls.crl_file (node/CONFIG.md, Rotation and
// revocation).
const CRLFile = "crl.pem"

// crlValidity is the NextUpdate of a CRL this CA signs. A node keeps
// applying a CRL past it (and logs that), so it only tells relying parties
// when to expect a newer one.
const crlValidity = 30 * 24 * time.Hour

// CRL returns a PEM X.509 CRL signed by the CA listing the given serials,
// with CRL number number.
func (ca *CA) CRL(serials []*big.Int, number int64) ([]byte, error) {
	now := time.Now()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(number),
		ThisUpdate: now.Add(-time.Minute),
		NextUpdate: now.Add(crlValidity),
	}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: now})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// Revoke adds the serials of certs to the CRL at path (created when
// absent; an existing one must be this CA's), with the next CRL number,
// and replaces the file atomically (write then rename), so a node polling
// it never reads half a CRL. It returns the serials now listed.
func (ca *CA) Revoke(path string, certs ...*x509.Certificate) ([]*big.Int, error) {
	var serials []*big.Int
	number := int64(1)
	seen := map[string]bool{}
	if b, err := os.ReadFile(path); err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("pki: %s holds no X509 CRL", path)
		}
		rl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: parse %s: %w", path, err)
		}
		if err := rl.CheckSignatureFrom(ca.Cert); err != nil {
			return nil, fmt.Errorf("pki: %s is not signed by this CA: %w", path, err)
		}
		if rl.Number != nil {
			number = rl.Number.Int64() + 1
		}
		for _, e := range rl.RevokedCertificateEntries {
			seen[e.SerialNumber.String()] = true
			serials = append(serials, e.SerialNumber)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pki: read CRL: %w", err)
	}
	for _, c := range certs {
		if !bytes.Equal(c.RawIssuer, ca.Cert.RawSubject) || c.CheckSignatureFrom(ca.Cert) != nil {
			return nil, fmt.Errorf("pki: %q was not issued by this CA", c.Subject.CommonName)
		}
		if !seen[c.SerialNumber.String()] {
			seen[c.SerialNumber.String()] = true
			serials = append(serials, c.SerialNumber)
		}
	}
	pemCRL, err := ca.CRL(serials, number)
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".crl-*")
	if err != nil {
		return nil, fmt.Errorf("pki: write CRL: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(pemCRL); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("pki: write CRL: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("pki: write CRL: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("pki: write CRL: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("pki: write CRL: %w", err)
	}
	return serials, nil
}

// LoadCert reads the first certificate of a PEM file.
func LoadCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: read certificate: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("pki: %s holds no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: parse %s: %w", path, err)
	}
	return c, nil
}
