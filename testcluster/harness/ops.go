package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Connection is the seed's register_connection body (sizes in bits).
type Connection struct {
	SourceKME        string `json:"source_KME_ID"`
	TargetKME        string `json:"target_KME_ID"`
	MasterSAE        string `json:"master_SAE_ID"`
	SlaveSAE         string `json:"slave_SAE_ID"`
	KeySize          int    `json:"key_size"`
	MaxKeysCount     int    `json:"max_keys_count"`
	MaxKeyPerRequest int    `json:"max_key_per_request"`
	MaxSAEIDCount    int    `json:"max_SAE_ID_count"`
}

// SeedURL is the seed API base URL of site ("" when off).
func (c *Cluster) SeedURL(site string) string {
	s := c.Layout.Site(site)
	if s == nil || s.SeedAddr == "" {
		return ""
	}
	return "http://" + s.SeedAddr
}

// RegisterConnection registers conn through the seed API of its source
// site (which registers it at both sites), retrying while no leader answers.
func (c *Cluster) RegisterConnection(ctx context.Context, conn Connection) error {
	base := c.SeedURL(conn.SourceKME)
	if base == "" {
		return fmt.Errorf("harness: site %s has no seed API (Options.Seed)", conn.SourceKME)
	}
	body, _ := json.Marshal(conn)
	return retry(ctx, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/register_connection", bytes.NewReader(body))
		if err != nil {
			return false, err
		}
		req.Header.Set("Content-Type", "application/json")
		return doJSON(http.DefaultClient, req, nil)
	})
}

// ImportBlock adds bits of key material to the pool of master→slave at both
// sites through the admin API of site (the master's or the slave's) with the
// site's operator certificate. The same block ID is retried until it
// succeeds or ctx ends (imports are idempotent on the block ID).
func (c *Cluster) ImportBlock(ctx context.Context, site, master, slave string, bits []byte) error {
	s := c.Layout.Site(site)
	if s == nil {
		return fmt.Errorf("%w: site %s", ErrUnknownNode, site)
	}
	h, err := c.HTTPClient(OperatorName(site))
	if err != nil {
		return err
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	body, _ := json.Marshal(map[string]any{"master_SAE_ID": master, "slave_SAE_ID": slave, "block_id": "import-" + hex.EncodeToString(id), "bits": bits})
	i := 0
	return retry(ctx, func(ctx context.Context) (bool, error) {
		n := s.Nodes[i%len(s.Nodes)]
		i++
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+n.Addr()+"/admin/v1/blocks", bytes.NewReader(body))
		if err != nil {
			return false, err
		}
		req.Header.Set("Content-Type", "application/json")
		return doJSON(h, req, nil)
	})
}

// FillPool imports random key material for keys keys of keyBits bits each,
// in blocks of at most blockKeys keys.
func (c *Cluster) FillPool(ctx context.Context, site, master, slave string, keys, keyBits, blockKeys int) error {
	for keys > 0 {
		n := min(keys, blockKeys)
		b := make([]byte, n*keyBits/8)
		_, _ = rand.Read(b)
		if err := c.ImportBlock(ctx, site, master, slave, b); err != nil {
			return err
		}
		keys -= n
	}
	return nil
}

// Status is the ETSI status of a connection as seen by SAE sae at site.
type Status struct {
	SourceKME      string `json:"source_KME_ID"`
	TargetKME      string `json:"target_KME_ID"`
	MasterSAE      string `json:"master_SAE_ID"`
	SlaveSAE       string `json:"slave_SAE_ID"`
	KeySize        int    `json:"key_size"`
	StoredKeyCount int    `json:"stored_key_count"`
	MaxKeyCount    int    `json:"max_key_count"`
}

// Status asks any node of site for the status of sae's connection to peer.
func (c *Cluster) Status(ctx context.Context, site, sae, peer string) (Status, error) {
	var st Status
	s := c.Layout.Site(site)
	if s == nil {
		return st, fmt.Errorf("%w: site %s", ErrUnknownNode, site)
	}
	h, err := c.HTTPClient(sae)
	if err != nil {
		return st, err
	}
	i := 0
	err = retry(ctx, func(ctx context.Context) (bool, error) {
		n := s.Nodes[i%len(s.Nodes)]
		i++
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+n.Addr()+"/api/v1/keys/"+peer+"/status", nil)
		if err != nil {
			return false, err
		}
		return doJSON(h, req, &st)
	})
	return st, err
}

// doJSON runs req and decodes a 200 answer into out. retry is true for
// transport errors and 5xx answers.
func doJSON(h *http.Client, req *http.Request, out any) (retry bool, err error) {
	resp, err := h.Do(req)
	if err != nil {
		return true, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode >= 500, fmt.Errorf("%s %s: HTTP %d: %s", req.Method, req.URL.Path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return false, fmt.Errorf("%s %s: decode: %w", req.Method, req.URL.Path, err)
		}
	}
	return false, nil
}

// retry calls f (each try bounded to 5 s) until it succeeds, returns a
// permanent error, or ctx ends.
func retry(ctx context.Context, f func(context.Context) (bool, error)) error {
	backoff := 50 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		again, err := f(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if !again {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// Burned sums qkdkms_keys_burned_total over site's connections, read from
// its leader (−1 when no leader answers).
func (c *Cluster) Burned(ctx context.Context, site string) int64 {
	l, err := c.WaitLeader(ctx, site)
	if err != nil {
		return -1
	}
	m, err := c.Metrics(ctx, l)
	if err != nil {
		return -1
	}
	var sum float64
	for k, v := range m {
		if strings.HasPrefix(k, "qkdkms_keys_burned_total") {
			sum += v
		}
	}
	return int64(sum)
}
