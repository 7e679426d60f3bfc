// Package network is the trusted-node relay (docs/ARCHITECTURE.md
// "Trusted-node relay"): a site whose SAEs share a connection with an SAE
// at a site it has no QKD link with fills that connection by relaying
// fresh key hop by hop, one-time-pad encrypted with each link's relay key,
// along the route with the most relay key available (widest path). Sites
// learn each other's links (up or down, relay key per direction, QBER)
// from the network_state call every leader answers.
package network

import (
	"slices"
	"sort"
)

// LinkReport is one QKD link of a site as that site sees it.
type LinkReport struct {
	Peer string `json:"peer"`
	Up   bool   `json:"up"`
	// Out and In are the relay key bytes left to send to Peer and to
	// receive from it.
	Out  uint64  `json:"relay_out_bytes"`
	In   uint64  `json:"relay_in_bytes"`
	QBER float64 `json:"qber"`
	// OutUsed and InUsed are the relay key bytes consumed so far in each
	// direction at this end (for the network checker).
	OutUsed uint64 `json:"relay_out_used"`
	InUsed  uint64 `json:"relay_in_used"`
}

// SiteReport is what a site advertises: its links.
type SiteReport struct {
	KME   string       `json:"kme"`
	Links []LinkReport `json:"links"`
}

// Route is a path of sites from the source to the destination and the
// relay key its narrowest hop holds (bytes).
type Route struct {
	Path  []string `json:"path"`
	Width uint64   `json:"width_bytes"`
}

// WidestPath is the route from src to dst with the most relay key along it
// (the largest minimum of Out over its hops), fewer hops on a tie, then the
// lexically smallest path. Only links reported up by the sending site, and
// sites present in reports and not in avoid, are used; a hop with no relay
// key left is not a route. ok is false when no route exists.
func WidestPath(reports map[string]SiteReport, src, dst string, avoid map[string]bool) (Route, bool) {
	if src == dst {
		return Route{}, false
	}
	type label struct {
		width uint64
		path  []string
	}
	better := func(a, b label) bool { // a better than b
		switch {
		case a.width != b.width:
			return a.width > b.width
		case len(a.path) != len(b.path):
			return len(a.path) < len(b.path)
		default:
			return slices.Compare(a.path, b.path) < 0
		}
	}
	best := map[string]label{src: {width: ^uint64(0), path: []string{src}}}
	done := map[string]bool{}
	for {
		// The best unfinished site (Dijkstra on the bottleneck width).
		var cur string
		for _, id := range sortedKeys(best) {
			if !done[id] && (cur == "" || better(best[id], best[cur])) {
				cur = id
			}
		}
		if cur == "" {
			break
		}
		done[cur] = true
		if cur == dst {
			l := best[dst]
			return Route{Path: l.path, Width: l.width}, true
		}
		rep, ok := reports[cur]
		if !ok {
			continue
		}
		for _, lk := range rep.Links {
			next := lk.Peer
			if !lk.Up || lk.Out == 0 || done[next] || avoid[next] || slices.Contains(best[cur].path, next) {
				continue
			}
			if _, ok := reports[next]; !ok {
				continue // does not answer
			}
			cand := label{width: min(best[cur].width, lk.Out), path: append(slices.Clone(best[cur].path), next)}
			if old, ok := best[next]; !ok || better(cand, old) {
				best[next] = cand
			}
		}
	}
	return Route{}, false
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
