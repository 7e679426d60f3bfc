package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"qkdkms/etsi/pki"
	"qkdkms/node/forward"
	"qkdkms/node/kme"
	"qkdkms/node/link"
)

// ErrAdmin wraps an error answer of the admin API (an *AdminError, which
// errors.Is also matches against the sentinel of its code in forward.Table).
var ErrAdmin = errors.New("node: admin request refused")

// AdminClient calls a site's admin API over mTLS. It tries the addresses in
// order until one answers (any node forwards to the leader).
type AdminClient struct {
	Addrs []string
	HTTP  *http.Client
}

// NewAdminClient builds a client from PEM files: the CA bundle and a node
// or operator certificate and key.
func NewAdminClient(addrs []string, caFile, certFile, keyFile string) (*AdminClient, error) {
	pool, err := pki.LoadPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("node: load client certificate: %w", err)
	}
	return &AdminClient{Addrs: addrs, HTTP: &http.Client{
		Timeout:   MaxAdminWait + 5*time.Second,
		Transport: &http.Transport{TLSClientConfig: pki.ClientConfig(cert, pool)},
	}}, nil
}

// Servers lists the site's Raft configuration.
func (c *AdminClient) Servers(ctx context.Context) (ServersResponse, error) {
	var out ServersResponse
	err := c.do(ctx, http.MethodGet, "/admin/v1/servers", nil, &out)
	return out, err
}

// Join adds node id at address as a voter.
func (c *AdminClient) Join(ctx context.Context, id, address string) (ServersResponse, error) {
	var out ServersResponse
	err := c.do(ctx, http.MethodPost, "/admin/v1/join", JoinRequest{ID: id, Address: address}, &out)
	return out, err
}

// Remove removes node id from the site.
func (c *AdminClient) Remove(ctx context.Context, id string) (ServersResponse, error) {
	var out ServersResponse
	err := c.do(ctx, http.MethodPost, "/admin/v1/remove", RemoveRequest{ID: id}, &out)
	return out, err
}

// maxAdminAnswer bounds an admin answer read by do.
const maxAdminAnswer = 1 << 20

func (c *AdminClient) do(ctx context.Context, method, path string, in, out any) error {
	return c.doUpTo(ctx, maxAdminAnswer, method, path, in, out)
}

// doUpTo sends in (JSON, when not nil) to each address in turn until one
// answers, and decodes an answer of up to limit bytes into out. An address
// that cannot be reached or read is passed over; the first answer other
// than 200 is the error.
func (c *AdminClient) doUpTo(ctx context.Context, limit int64, method, path string, in, out any) error {
	if len(c.Addrs) == 0 {
		return errors.New("node: admin client has no addresses")
	}
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("node: encode admin request: %w", err)
		}
		body = b
	}
	var lastErr error
	for _, addr := range c.Addrs {
		req, err := http.NewRequestWithContext(ctx, method, "https://"+addr+path, bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("node: admin request: %w", err)
		}
		if in != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		// The node stops waiting for a leader when the caller does.
		forward.SetDeadline(ctx, req.Header)
		resp, err := c.HTTP.Do(req)
		if err != nil {
			lastErr = fmt.Errorf("node: admin %s %s at %s: %w", method, path, addr, err)
			if ctx.Err() != nil {
				return lastErr
			}
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
		resp.Body.Close()
		if err != nil {
			lastErr = fmt.Errorf("node: admin %s at %s: read: %w", path, addr, err)
			continue
		}
		if resp.StatusCode != http.StatusOK {
			ae := forward.DecodeError(resp.StatusCode, b)
			return fmt.Errorf("%w: %s at %s: %w", ErrAdmin, path, addr, ae)
		}
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("node: admin %s at %s: decode: %w", path, addr, err)
		}
		return nil
	}
	return lastErr
}

// DeleteConnection deletes the connection master→slave at both sites,
// burning its pool and the keys not fetched yet.
func (c *AdminClient) DeleteConnection(ctx context.Context, master, slave string) (kme.DeleteResult, error) {
	var out kme.DeleteResult
	err := c.do(ctx, http.MethodPost, "/admin/v1/connections/delete", ConnDeleteRequest{Master: master, Slave: slave}, &out)
	return out, err
}

// Links returns the status of the site's QKD links (the leader's view).
func (c *AdminClient) Links(ctx context.Context) ([]link.Status, error) {
	var out []link.Status
	err := c.do(ctx, http.MethodGet, "/admin/v1/link", nil, &out)
	return out, err
}

// SetEve sets the simulated eavesdropper's fraction on the fiber to peer.
func (c *AdminClient) SetEve(ctx context.Context, peer string, p float64) ([]link.Status, error) {
	var out []link.Status
	err := c.do(ctx, http.MethodPost, "/admin/v1/link/eve", EveRequest{Peer: peer, P: p}, &out)
	return out, err
}

// Plugins lists the site's step plugins and the active choice per step.
func (c *AdminClient) Plugins(ctx context.Context) (PluginsResponse, error) {
	var out PluginsResponse
	err := c.do(ctx, http.MethodGet, "/admin/v1/plugins", nil, &out)
	return out, err
}

// InstallPlugin stores a WASM step plugin in the site.
func (c *AdminClient) InstallPlugin(ctx context.Context, req InstallRequest) (PluginsResponse, error) {
	var out PluginsResponse
	err := c.do(ctx, http.MethodPost, "/admin/v1/plugins/install", req, &out)
	return out, err
}

// RemovePlugin removes an installed plugin no step uses (NAME[@VERSION]).
func (c *AdminClient) RemovePlugin(ctx context.Context, plugin string) (PluginsResponse, error) {
	var out PluginsResponse
	err := c.do(ctx, http.MethodPost, "/admin/v1/plugins/remove", PluginRemoveRequest{Plugin: plugin}, &out)
	return out, err
}

// UsePlugin selects the site's plugin for a step (NAME or NAME@VERSION).
func (c *AdminClient) UsePlugin(ctx context.Context, step, plugin string) (PluginsResponse, error) {
	var out PluginsResponse
	err := c.do(ctx, http.MethodPost, "/admin/v1/plugins/use", UseRequest{Step: step, Plugin: plugin}, &out)
	return out, err
}
