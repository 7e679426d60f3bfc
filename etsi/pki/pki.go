// Package pki is the certificate side of qkdkms: a small demo CA, node (KME)
// and SAE certificates, the identities carried in them, and the mutual-TLS
// configurations every listener and client uses.
//
// Identities (a certificate carries at most one role identity; one with
// more is refused for every role, see ErrAmbiguousIdentity):
//   - an SAE certificate carries the SAE ID as a URI SAN "sae:<ID>" and as
//     its CN; SAEID reads the URI SAN first, else the CN;
//   - a node certificate carries its KME (site) ID as a URI SAN "kme:<KME ID>",
//     the node name as CN, and IP/DNS SANs for the hosts it serves.
//
// Files in a PKI directory: ca.crt, ca.key, and NAME.crt / NAME.key per
// certificate. Private keys are written with mode 0600.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	saeScheme = "sae"
	kmeScheme = "kme"
	// validity of demo certificates.
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 2 * 365 * 24 * time.Hour
)

// ErrNoIdentity: a certificate carries no usable identity.
var ErrNoIdentity = errors.New("pki: certificate carries no identity")

// CA is a certificate authority that can issue node and SAE certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte
}

// Init loads the CA in dir, creating dir and a new CA when none exists.
func Init(dir string) (*CA, error) {
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
		return Load(dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: create %s: %w", dir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "qkdkms demo CA", Organization: []string{"qkdkms"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeFiles(dir, "ca", certPEM, keyPEM); err != nil {
		return nil, err
	}
	return Load(dir)
}

// Load reads ca.crt and ca.key from dir.
func Load(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("pki: read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("pki: read CA key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key pair in %s: %w", dir, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("pki: CA key in %s is not ECDSA", dir)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, PEM: certPEM}, nil
}

// Pool returns a certificate pool holding the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf is an issued certificate and its key, PEM encoded.
type Leaf struct {
	CertPEM []byte
	KeyPEM  []byte
}

// TLS returns the leaf as a tls.Certificate.
func (l Leaf) TLS() (tls.Certificate, error) {
	c, err := tls.X509KeyPair(l.CertPEM, l.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: key pair: %w", err)
	}
	return c, nil
}

// Write stores the leaf as dir/name.crt and dir/name.key (0600).
func (l Leaf) Write(dir, name string) error { return writeFiles(dir, name, l.CertPEM, l.KeyPEM) }

// IssueNode issues a certificate for node name of KME kmeID, valid as TLS
// server and client, for the given host names and IPs. 127.0.0.1, ::1 and
// localhost are always included.
func (ca *CA) IssueNode(name, kmeID string, hosts []string) (Leaf, error) {
	if err := checkID(name); err != nil {
		return Leaf{}, err
	}
	if err := checkID(kmeID); err != nil {
		return Leaf{}, err
	}
	tmpl := leafTemplate(name)
	tmpl.URIs = []*url.URL{{Scheme: kmeScheme, Opaque: kmeID}}
	all := append([]string{"127.0.0.1", "::1", "localhost", name}, hosts...)
	seen := map[string]bool{}
	for _, h := range all {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	return ca.issue(tmpl)
}

// IssueSAE issues a client certificate for the SAE saeID.
func (ca *CA) IssueSAE(saeID string) (Leaf, error) {
	if err := checkID(saeID); err != nil {
		return Leaf{}, err
	}
	tmpl := leafTemplate(saeID)
	tmpl.URIs = []*url.URL{{Scheme: saeScheme, Opaque: saeID}}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return ca.issue(tmpl)
}

func (ca *CA) issue(tmpl *x509.Certificate) (Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Leaf{}, fmt.Errorf("pki: generate key: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return Leaf{}, fmt.Errorf("pki: create certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return Leaf{}, err
	}
	return Leaf{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: keyPEM}, nil
}

func leafTemplate(cn string) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"qkdkms"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
}

// checkID refuses names that cannot be carried in a URI SAN or a file name.
func checkID(id string) error {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, "/\\:\x00 ") || id == "." || id == ".." {
		return fmt.Errorf("pki: invalid name %q: 1-128 characters, no '/', '\\', ':' or spaces", id)
	}
	return nil
}

// ErrAmbiguousIdentity: a certificate carries more than one role identity
// (URI SANs sae:, kme: or kme-admin: naming different identities). Such a
// certificate is refused for every role: SAEID fails, KMEID and OperatorKME
// return "".
var ErrAmbiguousIdentity = errors.New("pki: certificate carries more than one role identity")

// ambiguous reports whether cert carries more than one distinct role
// identity among its sae:, kme: and kme-admin: URI SANs.
func ambiguous(cert *x509.Certificate) bool {
	first := ""
	for _, u := range cert.URIs {
		switch u.Scheme {
		case saeScheme, kmeScheme, operatorScheme:
		default:
			continue
		}
		if u.Opaque == "" {
			continue
		}
		id := u.Scheme + ":" + u.Opaque
		if first == "" {
			first = id
		} else if id != first {
			return true
		}
	}
	return false
}

// SAEID returns the SAE ID a verified client certificate carries: the URI
// SAN "sae:<ID>", else the subject CN. Node (kme:) and operator (kme-admin:)
// certificates are never SAEs, nor is a certificate with more than one role
// identity (ErrAmbiguousIdentity).
func SAEID(cert *x509.Certificate) (string, error) {
	if ambiguous(cert) {
		return "", ErrAmbiguousIdentity
	}
	for _, u := range cert.URIs {
		if u.Scheme == saeScheme && u.Opaque != "" {
			return u.Opaque, nil
		}
	}
	if cert.Subject.CommonName != "" && KMEID(cert) == "" && OperatorKME(cert) == "" {
		return cert.Subject.CommonName, nil
	}
	return "", ErrNoIdentity
}

// KMEID returns the KME ID a node certificate carries ("" when none, or when
// the certificate carries more than one role identity).
func KMEID(cert *x509.Certificate) string {
	if ambiguous(cert) {
		return ""
	}
	for _, u := range cert.URIs {
		if u.Scheme == kmeScheme && u.Opaque != "" {
			return u.Opaque
		}
	}
	return ""
}

// Fingerprint is the hex SHA-256 of the certificate's DER, for audit logs.
func Fingerprint(cert *x509.Certificate) string {
	return fmt.Sprintf("%x", sha256Sum(cert.Raw))
}

// LoadLeaf reads dir/name.crt and dir/name.key.
func LoadLeaf(dir, name string) (tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: load %s: %w", name, err)
	}
	return c, nil
}

// ErrKeyFileMode: a private key file is accessible by group or others.
var ErrKeyFileMode = errors.New("pki: private key file is accessible by group or others")

// LoadKeyPair reads a certificate and its private key like
// tls.LoadX509KeyPair, and refuses a key file accessible by group or others
// (mode 0600 or stricter required) with the same rule raftstore.LoadKEK
// applies to the KEK file.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	fi, err := os.Stat(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return tls.Certificate{}, fmt.Errorf("%w: %s has mode %#o, must be 0600 or stricter (chmod 600 %s)",
			ErrKeyFileMode, keyFile, fi.Mode().Perm(), keyFile)
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: load key pair: %w", err)
	}
	return c, nil
}

// LoadPool reads a PEM CA bundle into a pool.
func LoadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA bundle: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("pki: no certificates in %s", path)
	}
	return p, nil
}

// AEADSuites are the only TLS 1.2 cipher suites a qkdkms endpoint offers or
// accepts: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305. Go's default
// TLS 1.2 list also carries CBC and SHA-1 suites; TLS 1.3 suites are all AEAD
// and not configurable.
var AEADSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// ServerConfig is the mutual-TLS server configuration: TLS 1.2 minimum
// (1.3 preferred by Go) with AEADSuites only, client certificates required
// and verified against the CA pool.
func ServerConfig(cert tls.Certificate, clientCAs *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: AEADSuites,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    clientCAs,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// ClientConfig is the mutual-TLS client configuration (AEADSuites only).
func ClientConfig(cert tls.Certificate, rootCAs *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: AEADSuites,
		Certificates: []tls.Certificate{cert},
		RootCAs:      rootCAs,
	}
}

// serial is a random 126-bit serial number (crypto/rand never fails on
// supported platforms since Go 1.24).
func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func writeFiles(dir, name string, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: create %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), certPEM, 0o644); err != nil {
		return fmt.Errorf("pki: write %s.crt: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), keyPEM, 0o600); err != nil {
		return fmt.Errorf("pki: write %s.key: %w", name, err)
	}
	return nil
}
