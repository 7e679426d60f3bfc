package harness

// What the harness reads from a running cluster: its nodes, mTLS clients
// with the layout's certificates, /metrics, /readyz, each site's leader,
// and the nodes' logs.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"qkdkms/etsi/pki"
)

// Nodes lists a site's node IDs.
func (c *Cluster) Nodes(site string) []string {
	s := c.Layout.Site(site)
	if s == nil {
		return nil
	}
	out := make([]string, len(s.Nodes))
	for i, n := range s.Nodes {
		out[i] = n.ID
	}
	return out
}

// HTTPClient returns an mTLS client presenting certificate name from the
// cluster PKI (an SAE, operator-KME, harness-KME or a node ID).
func (c *Cluster) HTTPClient(name string) (*http.Client, error) {
	c.httpMu.Lock()
	defer c.httpMu.Unlock()
	if h := c.https[name]; h != nil {
		return h, nil
	}
	cfg, err := c.TLSConfig(name)
	if err != nil {
		return nil, err
	}
	h := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     cfg,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		TLSHandshakeTimeout: 3 * time.Second,
	}}
	c.https[name] = h
	return h, nil
}

// TLSConfig is the mTLS client configuration for certificate name.
func (c *Cluster) TLSConfig(name string) (*tls.Config, error) {
	pool, err := pki.LoadPool(filepath.Join(c.Layout.PKIDir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	cert, err := pki.LoadLeaf(c.Layout.PKIDir, name)
	if err != nil {
		return nil, err
	}
	return pki.ClientConfig(cert, pool), nil
}

// CertFiles returns the PEM paths (ca, cert, key) for certificate name.
func (c *Cluster) CertFiles(name string) (ca, cert, key string) {
	d := c.Layout.PKIDir
	return filepath.Join(d, "ca.crt"), filepath.Join(d, name+".crt"), filepath.Join(d, name+".key")
}

// Metrics scrapes node id's /metrics into name{labels} → value.
func (c *Cluster) Metrics(ctx context.Context, id string) (map[string]float64, error) {
	n := c.Layout.Node(id)
	if n == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	h, err := c.HTTPClient(OperatorName(n.KMEID))
	if err != nil {
		return nil, err
	}
	return scrape(ctx, h, "https://"+n.Addr()+"/metrics")
}

// Ready reports whether node id answers /readyz with 200.
func (c *Cluster) Ready(ctx context.Context, id string) bool {
	n := c.Layout.Node(id)
	if n == nil {
		return false
	}
	h, err := c.HTTPClient(OperatorName(n.KMEID))
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+n.Addr()+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := h.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Leader returns the node of site that reports itself leader (metric
// qkdkms_raft_is_leader). Frozen and dead nodes are skipped. With two
// self-declared leaders (an isolated old leader), the one with the higher
// term wins.
func (c *Cluster) Leader(ctx context.Context, site string) (string, error) {
	s := c.Layout.Site(site)
	if s == nil {
		return "", fmt.Errorf("%w: site %s", ErrUnknownNode, site)
	}
	type cand struct {
		id   string
		term float64
	}
	var (
		mu    sync.Mutex
		cands []cand
		wg    sync.WaitGroup
	)
	for _, n := range s.Nodes {
		if !c.Running(n.ID) || c.frozen(n.ID) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
			defer cancel()
			m, err := c.Metrics(cctx, n.ID)
			if err != nil || m["qkdkms_raft_is_leader"] != 1 {
				return
			}
			mu.Lock()
			cands = append(cands, cand{n.ID, m["qkdkms_raft_term"]})
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(cands) == 0 {
		return "", fmt.Errorf("%w: site %s", ErrNoLeader, site)
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].term > cands[j].term })
	return cands[0].id, nil
}

func (c *Cluster) frozen(id string) bool {
	if c.external != nil {
		_, unreachable := c.external(id)
		return unreachable
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[id]
	return p != nil && p.stopped
}

// WaitLeader polls until site has a leader other than any in not.
func (c *Cluster) WaitLeader(ctx context.Context, site string, not ...string) (string, error) {
	var last error
	for {
		id, err := c.Leader(ctx, site)
		if err == nil && !contains(not, id) {
			return id, nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("%w: site %s still led by %s", ErrNoLeader, site, id)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w (%w)", last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitLeaders waits until every site has a leader and every running node
// answers /readyz.
func (c *Cluster) WaitLeaders(ctx context.Context) error {
	for _, s := range c.Layout.Sites {
		if _, err := c.WaitLeader(ctx, s.KMEID); err != nil {
			return err
		}
		for _, n := range s.Nodes {
			for c.Running(n.ID) && !c.frozen(n.ID) && !c.Ready(ctx, n.ID) {
				select {
				case <-ctx.Done():
					return fmt.Errorf("harness: %s not ready: %w", n.ID, ctx.Err())
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}
	return nil
}

// TailLogs returns the last lines of every node's log, for failures.
func (c *Cluster) TailLogs(lines int) string {
	var b strings.Builder
	for _, s := range c.Layout.Sites {
		for _, n := range s.Nodes {
			fmt.Fprintf(&b, "--- %s (%s) ---\n", n.ID, n.LogPath)
			b.WriteString(tail(n.LogPath, lines))
		}
	}
	return b.String()
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error() + "\n"
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n") + "\n"
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// scrape fetches a Prometheus text exposition and returns its samples keyed
// by `name` or `name{labels}` exactly as written.
func scrape(ctx context.Context, h *http.Client, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.Do(req)
	if err != nil {
		return nil, fmt.Errorf("harness: scrape: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("harness: scrape %s: HTTP %d", url, resp.StatusCode)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// name{labels} value [timestamp]; label values may hold spaces.
		key, rest := line, ""
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			key, rest = line[:i+1], strings.TrimSpace(line[i+1:])
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			key, rest = line[:i], strings.TrimSpace(line[i+1:])
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[key] = v
	}
	return out, sc.Err()
}

// NodeOf names the node advertising addr ("" when none).
func (c *Cluster) NodeOf(addr string) string {
	for _, s := range c.Layout.Sites {
		for _, n := range s.Nodes {
			if n.Advertise == addr {
				return n.ID
			}
		}
	}
	return ""
}

// LinkStatus is the part of a node's GET /admin/v1/link answer (node/link
// Status) the experiments read.
type LinkStatus struct {
	Peer         string `json:"peer"`
	Role         string `json:"role"`
	Sessions     int64  `json:"sessions"`
	Aborted      int64  `json:"aborted"`
	LastError    string `json:"last_error,omitempty"`
	AuthPadsUsed uint64 `json:"auth_pad_bytes_used"`
	Driver       struct {
		Driver string `json:"driver"`
		OK     bool   `json:"ok"`
	} `json:"driver"`
}

// LinkStatuses asks node id (answered by its site's leader) for its QKD
// links' status.
func (c *Cluster) LinkStatuses(ctx context.Context, id string) ([]LinkStatus, error) {
	n := c.Layout.Node(id)
	if n == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	h, err := c.HTTPClient(OperatorName(n.KMEID))
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+n.Addr()+"/admin/v1/link", nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("harness: link status of %s: HTTP %d", id, resp.StatusCode)
	}
	var out []LinkStatus
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("harness: link status of %s: %w", id, err)
	}
	return out, nil
}
