package network

import (
	"slices"
	"testing"
)

func TestWidestPath(t *testing.T) {
	link := func(peer string, out uint64) LinkReport { return LinkReport{Peer: peer, Up: true, Out: out} }
	down := func(peer string, out uint64) LinkReport { return LinkReport{Peer: peer, Out: out} }
	ring := map[string]SiteReport{
		"A": {KME: "A", Links: []LinkReport{link("B", 100), link("D", 50)}},
		"B": {KME: "B", Links: []LinkReport{link("A", 100), link("C", 80)}},
		"C": {KME: "C", Links: []LinkReport{link("B", 80), link("D", 500)}},
		"D": {KME: "D", Links: []LinkReport{link("A", 50), link("C", 500)}},
	}
	without := func(m map[string]SiteReport, id string) map[string]SiteReport {
		out := map[string]SiteReport{}
		for k, v := range m {
			if k != id {
				out[k] = v
			}
		}
		return out
	}
	cases := []struct {
		name    string
		reports map[string]SiteReport
		src     string
		dst     string
		avoid   map[string]bool
		path    []string
		width   uint64
	}{
		{"widest side", ring, "A", "C", nil, []string{"A", "B", "C"}, 80},
		{"direct neighbour", ring, "A", "B", nil, []string{"A", "B"}, 100},
		{"avoided site", ring, "A", "C", map[string]bool{"B": true}, []string{"A", "D", "C"}, 50},
		{"silent site", without(ring, "B"), "A", "C", nil, []string{"A", "D", "C"}, 50},
		{"link down", map[string]SiteReport{
			"A": {KME: "A", Links: []LinkReport{down("B", 100), link("D", 50)}},
			"B": ring["B"], "C": ring["C"], "D": ring["D"]}, "A", "C", nil, []string{"A", "D", "C"}, 50},
		{"no relay key left", map[string]SiteReport{
			"A": {KME: "A", Links: []LinkReport{link("B", 0)}},
			"B": {KME: "B", Links: []LinkReport{link("C", 10)}}, "C": {KME: "C"}}, "A", "C", nil, nil, 0},
		{"line pauses without its middle", without(map[string]SiteReport{
			"A": {KME: "A", Links: []LinkReport{link("B", 10)}},
			"B": {KME: "B", Links: []LinkReport{link("A", 10), link("C", 10)}}, "C": {KME: "C"}}, "B"), "A", "C", nil, nil, 0},
		{"fewer hops on a tie", map[string]SiteReport{
			"A": {KME: "A", Links: []LinkReport{link("B", 10), link("C", 10)}},
			"B": {KME: "B", Links: []LinkReport{link("C", 10)}}, "C": {KME: "C"}}, "A", "C", nil, []string{"A", "C"}, 10},
		{"to itself", ring, "A", "A", nil, nil, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt, ok := WidestPath(tc.reports, tc.src, tc.dst, tc.avoid)
			if ok != (tc.path != nil) || !slices.Equal(rt.Path, tc.path) || rt.Width != tc.width {
				t.Fatalf("WidestPath = %+v, %v; want %v width %d", rt, ok, tc.path, tc.width)
			}
		})
	}
}
