package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"
)

// NodeDigest is one node's FSM digest at an applied index.
type NodeDigest struct {
	Node   string `json:"node"`
	Index  uint64 `json:"index"`
	Digest string `json:"digest"`
}

// ErrNoDigest: the node does not serve GET /admin/v1/digest.
var ErrNoDigest = errors.New("harness: node serves no FSM digest")

// Digest asks node id for its FSM digest (GET /admin/v1/digest, answered
// locally: {"index": N, "digest": "..."}).
func (c *Cluster) Digest(ctx context.Context, id string) (NodeDigest, error) {
	n := c.Layout.Node(id)
	if n == nil {
		return NodeDigest{}, fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	h, err := c.HTTPClient(OperatorName(n.KMEID))
	if err != nil {
		return NodeDigest{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+n.Addr()+"/admin/v1/digest", nil)
	if err != nil {
		return NodeDigest{}, err
	}
	resp, err := h.Do(req)
	if err != nil {
		return NodeDigest{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
		return NodeDigest{}, ErrNoDigest
	}
	var out struct {
		Index  uint64 `json:"index"`
		Digest string `json:"digest"`
	}
	if resp.StatusCode != http.StatusOK {
		return NodeDigest{}, fmt.Errorf("harness: digest of %s: HTTP %d", id, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return NodeDigest{}, fmt.Errorf("harness: digest of %s: %w", id, err)
	}
	return NodeDigest{Node: id, Index: out.Index, Digest: out.Digest}, nil
}

// DigestsAgree waits (up to wait) until every node of every site reports
// the same FSM index as the rest of its site, then compares digests. It
// returns the digests and the number of sites whose nodes disagree.
func (c *Cluster) DigestsAgree(ctx context.Context, wait time.Duration) ([]NodeDigest, int, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		var all []NodeDigest
		mismatched, settled := 0, true
		for _, s := range c.Layout.Sites {
			var ds []NodeDigest
			for _, n := range s.Nodes {
				d, err := c.Digest(ctx, n.ID)
				if errors.Is(err, ErrNoDigest) {
					return nil, 0, err
				}
				if err != nil {
					settled = false
					continue
				}
				ds = append(ds, d)
			}
			sort.Slice(ds, func(i, j int) bool { return ds[i].Node < ds[j].Node })
			for _, d := range ds {
				if d.Index != ds[0].Index {
					settled = false
				} else if d.Digest != ds[0].Digest {
					mismatched++
					break
				}
			}
			all = append(all, ds...)
		}
		if settled || ctx.Err() != nil {
			if !settled {
				return all, mismatched, fmt.Errorf("harness: FSM indexes did not converge: %w", ctx.Err())
			}
			return all, mismatched, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}
