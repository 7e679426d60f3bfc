package harness

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"qkdkms/node"
)

// readConfig checks that the node accepts node id's generated config
// (decoded strictly by the node's own Config, then validated) and returns
// it as the harness wrote it.
func readConfig(t *testing.T, l *Layout, id string) configFile {
	t.Helper()
	n := l.Node(id)
	if n == nil {
		t.Fatalf("no node %s", id)
	}
	nc, err := node.LoadConfig(n.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.WithDefaults().Validate(); err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	b, err := os.ReadFile(n.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var cf configFile
	if err := json.Unmarshal(b, &cf); err != nil {
		t.Fatal(err)
	}
	return cf
}

// TestLayoutTopologies generates a 3-site line and a 4-site ring (no
// processes) and checks every node's config: peers name every other site
// with all its nodes, links[] has one entry per other site — sim with the
// relay settings for a neighbour, "none" otherwise — and no two sites share
// a port.
func TestLayoutTopologies(t *testing.T) {
	for _, tc := range []struct {
		topology string
		sites    []string
		linked   [][2]string
	}{
		{TopologyLine, []string{"a_app", "b_app", "c_app"}, [][2]string{{"a_app", "b_app"}, {"b_app", "c_app"}}},
		{TopologyRing, []string{"a_app", "b_app", "c_app", "d_app"},
			[][2]string{{"a_app", "b_app"}, {"b_app", "c_app"}, {"c_app", "d_app"}, {"d_app", "a_app"}}},
	} {
		t.Run(tc.topology, func(t *testing.T) {
			c, err := New(Options{Binary: "qkdkms", Dir: t.TempDir(), Sites: tc.sites, Topology: tc.topology, Seed: true,
				Link: &LinkSpec{Native: true, FiberKm: 5, RelayPoolBytes: 4096, RelayShare: 0.5}})
			if err != nil {
				t.Fatal(err)
			}
			l := c.Layout
			if got := c.Sites(); !slices.Equal(got, tc.sites) {
				t.Fatalf("sites %v, want %v", got, tc.sites)
			}
			if c.Sender() != tc.sites[0] || c.Receiver() != tc.sites[1] {
				t.Fatalf("Sender/Receiver %s/%s, want the first two sites", c.Sender(), c.Receiver())
			}
			if !slices.Equal(l.Links, tc.linked) {
				t.Fatalf("links %v, want %v", l.Links, tc.linked)
			}
			linked := func(a, b string) bool {
				return slices.Contains(tc.linked, [2]string{a, b}) || slices.Contains(tc.linked, [2]string{b, a})
			}
			ports := map[string]string{} // port → what serves on it
			claim := func(addr, what string) {
				_, p, err := net.SplitHostPort(addr)
				if err != nil {
					t.Fatal(err)
				}
				if prev, ok := ports[p]; ok {
					t.Errorf("port %s: %s and %s", p, prev, what)
				}
				ports[p] = what
			}
			for i, site := range tc.sites {
				s := l.Site(site)
				if s == nil || len(s.Nodes) != 3 {
					t.Fatalf("site %s: %+v", site, s)
				}
				// Site i's node 1 follows the port rule: 8443, 9443, 10443, …; seed 8000, 8001, 8002, …
				if _, p, _ := net.SplitHostPort(s.Nodes[0].Listen); p != strconv.Itoa(8443+1000*i) {
					t.Errorf("site %s: node 1 on port %s, want %d", site, p, 8443+1000*i)
				}
				if _, p, _ := net.SplitHostPort(s.SeedAddr); p != strconv.Itoa(8000+i) {
					t.Errorf("site %s: seed API on port %s, want %d", site, p, 8000+i)
				}
				claim(s.SeedAddr, site+" seed")
				for _, n := range s.Nodes {
					claim(n.Listen, n.ID)
					cf := readConfig(t, l, n.ID)
					if cf.KMEID != site || len(cf.Bootstrap) != 3 {
						t.Errorf("%s: kme %s, bootstrap %v", n.ID, cf.KMEID, cf.Bootstrap)
					}
					var others []string
					for _, o := range tc.sites {
						if o == site {
							continue
						}
						others = append(others, o)
						if got, want := cf.Peers[o], l.Site(o).Addrs(); !slices.Equal(got, want) {
							t.Errorf("%s: peers[%s] = %v, want %v", n.ID, o, got, want)
						}
					}
					if len(cf.Peers) != len(others) {
						t.Errorf("%s: peers %v, want exactly %v", n.ID, cf.Peers, others)
					}
					if len(cf.Links) != len(others) {
						t.Fatalf("%s: links %+v, want one per other site %v", n.ID, cf.Links, others)
					}
					for j, pl := range cf.Links {
						if pl.Peer != others[j] {
							t.Errorf("%s: links[%d].peer %s, want %s", n.ID, j, pl.Peer, others[j])
						}
						var opts map[string]float64
						_ = json.Unmarshal(pl.Options, &opts)
						if linked(site, pl.Peer) {
							if pl.Driver != "sim" || pl.RelayPoolBytes != 4096 || pl.RelayShare != 0.5 || len(opts) != 1 || opts["fiber_km"] != 5 {
								t.Errorf("%s: link to neighbour %s: %+v", n.ID, pl.Peer, pl)
							}
						} else if pl.Driver != DriverNone || len(pl.Options) != 0 || pl.RelayPoolBytes != 0 || pl.RelayShare != 0 {
							t.Errorf("%s: %s is not a neighbour, links entry %+v", n.ID, pl.Peer, pl)
						}
					}
					if want := neighboursOf(site, tc.linked, tc.sites); !slices.Equal(l.Neighbours(site), want) {
						t.Errorf("Neighbours(%s) = %v, want %v", site, l.Neighbours(site), want)
					}
				}
				// Every site has its certificates.
				for _, name := range []string{OperatorName(site), HarnessName(site), NodeID(site, 3)} {
					if _, err := os.Stat(filepath.Join(l.PKIDir, name+".crt")); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
}

func neighboursOf(site string, linked [][2]string, sites []string) []string {
	var out []string
	for _, s := range sites {
		if slices.Contains(linked, [2]string{site, s}) || slices.Contains(linked, [2]string{s, site}) {
			out = append(out, s)
		}
	}
	return out
}

// TestLayoutTwoSitesUnchanged: without Sites the layout is today's two
// sites on 8443/9443 and 8000/8001, links[] as the caller gave them (none:
// the node's default sim link), and bad site lists are refused.
func TestLayoutTwoSitesUnchanged(t *testing.T) {
	c, err := New(Options{Binary: "qkdkms", Dir: t.TempDir(), Seed: true, Link: &LinkSpec{Native: true}})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Sites(); !slices.Equal(got, []string{DefaultSender, DefaultReceiver}) {
		t.Fatalf("sites %v", got)
	}
	l := c.Layout
	for site, want := range map[string][2]string{DefaultSender: {"127.0.0.1:8443", "127.0.0.1:8000"}, DefaultReceiver: {"127.0.0.1:9443", "127.0.0.1:8001"}} {
		s := l.Site(site)
		if s.Nodes[0].Listen != want[0] || s.SeedAddr != want[1] {
			t.Errorf("site %s: %s, seed %s; want %v", site, s.Nodes[0].Listen, s.SeedAddr, want)
		}
		cf := readConfig(t, l, NodeID(site, 1))
		if len(cf.Links) != 0 || len(cf.Peers) != 1 {
			t.Errorf("%s: links %+v, peers %v", site, cf.Links, cf.Peers)
		}
	}
	for _, o := range []Options{
		{Sites: []string{"a_app"}},
		{Sites: []string{"a_app", "a_app"}},
		{Sites: []string{"a_app", "b_app"}, Topology: TopologyRing},
		{Sites: []string{"a_app", "b_app"}, Topology: "star"},
		{Sites: []string{"a_app", "b_app", "c_app"}, Ports: []int{8443, 8444}}, // a's node 2 is b's node 1
	} {
		o.Binary, o.Dir = "qkdkms", t.TempDir()
		if _, err := New(o); !errors.Is(err, ErrLayout) {
			t.Errorf("New(sites %v, topology %q, ports %v): %v, want ErrLayout", o.Sites, o.Topology, o.Ports, err)
		}
	}
}
