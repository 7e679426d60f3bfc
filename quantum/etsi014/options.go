package etsi014

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"qkdkms/etsi"
	"qkdkms/etsi/pki"
	"qkdkms/quantum"
)

func init() { quantum.Register("etsi014", NewDriver) }

// Defaults of the options.
const (
	DefaultKeySize           = 256 // bits
	DefaultMaxKeysPerRequest = 1
	DefaultTimeout           = 10 * time.Second

	minKeySize        = 8
	maxKeySize        = 1 << 16 // bits
	maxKeysPerRequest = 1 << 16
	maxTimeout        = 10 * time.Minute
)

// Options are the "etsi014" driver's options (the package comment
// describes each).
type Options struct {
	URL               string           `json:"url"`
	SAEID             string           `json:"sae_id"`
	PeerSAEID         string           `json:"peer_sae_id"`
	KeySize           int              `json:"key_size"`
	MaxKeysPerRequest int              `json:"max_keys_per_request"`
	CAFile            string           `json:"ca_file"`
	CertFile          string           `json:"cert_file"`
	KeyFile           string           `json:"key_file"`
	Timeout           quantum.Duration `json:"timeout"`
}

// ErrOptions: the driver's options are invalid.
var ErrOptions = errors.New("etsi014: invalid options")

// ParseOptions decodes options strictly (unknown members are an error),
// fills in the defaults and validates them (Validate).
func ParseOptions(options json.RawMessage) (Options, error) {
	var o Options
	if err := quantum.DecodeOptions(options, &o); err != nil {
		return Options{}, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	o = o.withDefaults()
	if err := o.Validate(); err != nil {
		return Options{}, err
	}
	return o, nil
}

func (o Options) withDefaults() Options {
	if o.KeySize == 0 {
		o.KeySize = DefaultKeySize
	}
	if o.MaxKeysPerRequest == 0 {
		o.MaxKeysPerRequest = DefaultMaxKeysPerRequest
	}
	if o.Timeout == 0 {
		o.Timeout = quantum.Duration(DefaultTimeout)
	}
	return o
}

// Validate checks options with their defaults filled in: every problem is
// named in one error wrapping ErrOptions. It reads the certificate, key
// and CA files (the key file must be mode 0600 or stricter) but makes no
// network call.
func (o Options) Validate() error {
	var probs []string
	add := func(format string, a ...any) { probs = append(probs, fmt.Sprintf(format, a...)) }
	if _, err := baseURL(o.URL); err != nil {
		add("url: %v", err)
	}
	switch {
	case o.SAEID == "":
		add("sae_id: required (this site's SAE ID at its device)")
	case !etsi.ValidSAEID(o.SAEID):
		add("sae_id: %q is not a valid SAE ID (1-128 printable characters, no '/', '\\', ':' or spaces)", o.SAEID)
	}
	switch {
	case o.PeerSAEID == "":
		add("peer_sae_id: required (the peer site's SAE ID at its device)")
	case !etsi.ValidSAEID(o.PeerSAEID):
		add("peer_sae_id: %q is not a valid SAE ID (1-128 printable characters, no '/', '\\', ':' or spaces)", o.PeerSAEID)
	case o.PeerSAEID == o.SAEID:
		add("peer_sae_id: must differ from sae_id")
	}
	if o.KeySize < minKeySize || o.KeySize > maxKeySize || o.KeySize%8 != 0 {
		add("key_size: %d bits, want a multiple of 8 in [%d, %d]", o.KeySize, minKeySize, maxKeySize)
	}
	if o.MaxKeysPerRequest < 1 || o.MaxKeysPerRequest > maxKeysPerRequest {
		add("max_keys_per_request: %d, want 1 … %d", o.MaxKeysPerRequest, maxKeysPerRequest)
	}
	if o.Timeout.D() <= 0 || o.Timeout.D() > maxTimeout {
		add("timeout: %v, want more than 0 and at most %v", o.Timeout.D(), maxTimeout)
	}
	if _, err := o.tlsConfig(); err != nil {
		add("%v", err)
	}
	if len(probs) > 0 {
		return fmt.Errorf("%w: %s", ErrOptions, strings.Join(probs, "; "))
	}
	return nil
}

// baseURL checks the device's base URL (https, a host, no query, fragment
// or user info) and returns it without a trailing slash.
func baseURL(s string) (string, error) {
	if s == "" {
		return "", errors.New("required (the device's ETSI 014 base URL, https://host:port)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%q: %w", s, err)
	}
	switch {
	case u.Scheme != "https":
		return "", fmt.Errorf("%q: want an https URL (the device is reached over mutual TLS)", s)
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("%q: no host", s)
	case u.User != nil:
		return "", fmt.Errorf("%q: user information is not allowed (the client certificate authenticates)", s)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", fmt.Errorf("%q: no query or fragment allowed", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// tlsConfig loads the client certificate and the device's CA.
func (o Options) tlsConfig() (*tls.Config, error) {
	var probs []string
	if o.CAFile == "" {
		probs = append(probs, "ca_file: required (the CA that issued the device's server certificate)")
	}
	if o.CertFile == "" {
		probs = append(probs, "cert_file: required (this site's SAE client certificate at its device)")
	}
	if o.KeyFile == "" {
		probs = append(probs, "key_file: required (the private key of cert_file, mode 0600)")
	}
	if len(probs) > 0 {
		return nil, errors.New(strings.Join(probs, "; "))
	}
	pool, err := pki.LoadPool(o.CAFile)
	if err != nil {
		probs = append(probs, fmt.Sprintf("ca_file: %v", err))
	}
	cert, err := pki.LoadKeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		probs = append(probs, fmt.Sprintf("cert_file/key_file: %v", err))
	}
	if len(probs) > 0 {
		return nil, errors.New(strings.Join(probs, "; "))
	}
	return pki.ClientConfig(cert, pool), nil
}
