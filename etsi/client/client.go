// Package client is a Go SAE client for the ETSI GS QKD 014 API served by
// qkdkms (etsi/API.md): Status, EncKeys and DecKeys over mutual TLS with
// keep-alive, answers decoded into etsi types, refusals as *Error.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"qkdkms/etsi"
	"qkdkms/etsi/pki"
)

// Error is a refusal from the KME: the HTTP status and the ETSI Error
// object (Message, Details). Match with errors.As, or errors.Is against
// ErrBadRequest, ErrUnauthorized, ErrUnavailable.
type Error struct {
	StatusCode int
	Message    string
	Details    []map[string]any
	Body       []byte // raw answer body
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("etsi client: HTTP %d", e.StatusCode)
	}
	return fmt.Sprintf("etsi client: HTTP %d: %s", e.StatusCode, e.Message)
}

// Is maps the status class to the sentinels below.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrBadRequest:
		return e.StatusCode == http.StatusBadRequest || e.StatusCode == http.StatusRequestEntityTooLarge
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized
	case ErrUnavailable:
		return e.StatusCode == http.StatusServiceUnavailable
	}
	return false
}

// Sentinels an *Error matches by status.
var (
	ErrBadRequest   = errors.New("etsi client: bad request")
	ErrUnauthorized = errors.New("etsi client: unauthorized")
	ErrUnavailable  = errors.New("etsi client: service unavailable")
	// ErrProtocol: the KME answered something that is not valid ETSI 014.
	ErrProtocol = errors.New("etsi client: protocol violation")
)

// Client talks to one KME as one SAE. It is safe for concurrent use and
// keeps connections alive.
type Client struct {
	base string
	hc   *http.Client
}

// Options tune New.
type Options struct {
	// Timeout per call; 0 means 30 s.
	Timeout time.Duration
	// MaxConns bounds idle keep-alive connections to the KME; 0 means 64.
	MaxConns int
}

// New returns a client for the KME at baseURL (https://host:port) using
// tlsConf (which must carry the SAE certificate and the CA).
func New(baseURL string, tlsConf *tls.Config, o Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("etsi client: KME URL %q: want https://host:port", baseURL)
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 64
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsConf.Clone(),
		MaxIdleConns:        o.MaxConns,
		MaxIdleConnsPerHost: o.MaxConns,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &Client{
		base: strings.TrimRight(baseURL, "/"),
		hc: &http.Client{Transport: tr, Timeout: o.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}, nil
}

// NewFromFiles loads the SAE certificate and key and the CA bundle (PEM
// files) and returns a client for baseURL.
func NewFromFiles(baseURL, certFile, keyFile, caFile string, o Options) (*Client, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("etsi client: load certificate: %w", err)
	}
	pool, err := pki.LoadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("etsi client: %w", err)
	}
	return New(baseURL, pki.ClientConfig(cert, pool), o)
}

// Close drops idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, query url.Values, body any, out any) error {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("etsi client: encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("etsi client: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("etsi client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("etsi client: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{StatusCode: resp.StatusCode, Body: b}
		var eb etsi.Error
		if json.Unmarshal(b, &eb) == nil {
			e.Message, e.Details = eb.Message, eb.Details
		}
		return e
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%w: %s %s: %v", ErrProtocol, method, path, err)
	}
	return nil
}

func keysPath(sae, call string) string {
	return "/api/v1/keys/" + url.PathEscape(sae) + "/" + call
}

// Status returns the status of the connection from this SAE (master) to
// slave.
func (c *Client) Status(ctx context.Context, slave string) (etsi.Status, error) {
	var st etsi.Status
	err := c.do(ctx, http.MethodGet, keysPath(slave, "status"), nil, nil, &st)
	return st, err
}

// EncKeys asks for new keys shared with slave (POST). Zero Number/Size
// mean the KME's defaults.
func (c *Client) EncKeys(ctx context.Context, slave string, r etsi.KeyRequest) ([]Key, error) {
	var kc etsi.KeyContainer
	if err := c.do(ctx, http.MethodPost, keysPath(slave, "enc_keys"), nil, r, &kc); err != nil {
		return nil, err
	}
	return decodeKeys(kc, nil)
}

// EncKeysGet is the GET form of enc_keys (number and size only; zero
// means default).
func (c *Client) EncKeysGet(ctx context.Context, slave string, number, size int) ([]Key, error) {
	q := url.Values{}
	if number > 0 {
		q.Set("number", strconv.Itoa(number))
	}
	if size > 0 {
		q.Set("size", strconv.Itoa(size))
	}
	var kc etsi.KeyContainer
	if err := c.do(ctx, http.MethodGet, keysPath(slave, "enc_keys"), q, nil, &kc); err != nil {
		return nil, err
	}
	return decodeKeys(kc, nil)
}

// DecKeys fetches the keys with the given IDs that master obtained for
// this SAE (POST; one ID may use DecKeyGet).
func (c *Client) DecKeys(ctx context.Context, master string, ids ...string) ([]Key, error) {
	refs := make([]etsi.KeyIDRef, len(ids))
	for i, id := range ids {
		refs[i] = etsi.KeyIDRef{KeyID: id}
	}
	var kc etsi.KeyContainer
	if err := c.do(ctx, http.MethodPost, keysPath(master, "dec_keys"), nil, etsi.KeyIDs{KeyIDs: refs}, &kc); err != nil {
		return nil, err
	}
	return decodeKeys(kc, ids)
}

// DecKeyGet is the GET form of dec_keys for one key ID.
func (c *Client) DecKeyGet(ctx context.Context, master, id string) (Key, error) {
	var kc etsi.KeyContainer
	if err := c.do(ctx, http.MethodGet, keysPath(master, "dec_keys"), url.Values{"key_ID": {id}}, nil, &kc); err != nil {
		return Key{}, err
	}
	keys, err := decodeKeys(kc, []string{id})
	if err != nil {
		return Key{}, err
	}
	return keys[0], nil
}

// Key is a key as the client returns it.
type Key struct {
	ID    string `json:"key_ID"`
	Bytes []byte `json:"key"` // base64 in JSON, as in ETSI 014
}

func decodeKeys(kc etsi.KeyContainer, want []string) ([]Key, error) {
	out := make([]Key, len(kc.Keys))
	for i, k := range kc.Keys {
		b, err := base64.StdEncoding.Strict().DecodeString(k.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: key %s is not base64: %v", ErrProtocol, k.KeyID, err)
		}
		id, ok := etsi.CanonicalKeyID(k.KeyID)
		if !ok || len(b) == 0 {
			return nil, fmt.Errorf("%w: bad key %q", ErrProtocol, k.KeyID)
		}
		out[i] = Key{ID: id, Bytes: b}
	}
	if want != nil {
		if len(out) != len(want) {
			return nil, fmt.Errorf("%w: %d keys for %d IDs", ErrProtocol, len(out), len(want))
		}
		for i, id := range want {
			if c, _ := etsi.CanonicalKeyID(id); c != out[i].ID {
				return nil, fmt.Errorf("%w: key %d is %s, asked for %s", ErrProtocol, i, out[i].ID, id)
			}
		}
	}
	return out, nil
}
