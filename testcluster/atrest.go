package testcluster

import (
	"context"
	"encoding/base64"
	binenc "encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// AtRestHit is one key found in plaintext in a file (invariant I5, README).
type AtRestHit struct {
	File     string `json:"file"`
	Offset   int64  `json:"offset"`
	Encoding string `json:"encoding"` // raw, base64, hex
}

// ScanAtRest looks for every key (raw bytes, standard base64 and lowercase
// hex) in every regular file under dirs. Keys shorter than 8 bytes are
// skipped (they match by chance). It returns one hit per file, key and
// encoding found.
func ScanAtRest(dirs []string, keys [][]byte) ([]AtRestHit, error) {
	type pattern struct {
		b   []byte
		enc string
	}
	byPrefix := map[uint64][]pattern{}
	add := func(b []byte, enc string) {
		byPrefix[binenc.LittleEndian.Uint64(b[:8])] = append(byPrefix[binenc.LittleEndian.Uint64(b[:8])], pattern{b, enc})
	}
	for _, k := range keys {
		if len(k) < 8 {
			continue
		}
		add(k, "raw")
		add([]byte(base64.StdEncoding.EncodeToString(k)), "base64")
		add([]byte(hex.EncodeToString(k)), "hex")
	}
	var hits []AtRestHit
	if len(byPrefix) == 0 {
		return nil, nil
	}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			seen := map[string]bool{}
			for i := 0; i+8 <= len(b); i++ {
				ps, ok := byPrefix[binenc.LittleEndian.Uint64(b[i:i+8])]
				if !ok {
					continue
				}
				for _, p := range ps {
					if i+len(p.b) <= len(b) && string(b[i:i+len(p.b)]) == string(p.b) {
						id := p.enc + string(p.b)
						if !seen[id] {
							seen[id] = true
							hits = append(hits, AtRestHit{File: path, Offset: int64(i), Encoding: p.enc})
						}
					}
				}
			}
			return nil
		})
		if err != nil {
			return hits, fmt.Errorf("testcluster: at-rest scan: %w", err)
		}
	}
	return hits, nil
}

// NodeDigest is one node's FSM digest at an applied index.
type NodeDigest struct {
	Node   string `json:"node"`
	Index  uint64 `json:"index"`
	Digest string `json:"digest"`
}

// ErrNoDigest: the node does not serve GET /admin/v1/digest.
var ErrNoDigest = errors.New("testcluster: node serves no FSM digest")

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
		return NodeDigest{}, fmt.Errorf("testcluster: digest of %s: HTTP %d", id, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return NodeDigest{}, fmt.Errorf("testcluster: digest of %s: %w", id, err)
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
				return all, mismatched, fmt.Errorf("testcluster: FSM indexes did not converge: %w", ctx.Err())
			}
			return all, mismatched, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}
