package harness

import (
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Network namespaces (Options.Netns, root only): every node runs in its own
// namespace with one veth on a private bridge in 10.213.X.0/24; the harness
// (and the SAE clients) reach the nodes from the host side of the bridge.
// Faults are iptables rules inside the nodes' namespaces:
//
//	Isolate(node)  the node drops every packet to/from the other nodes of its
//	               site (clients still reach it, so a minority leader answers)
//	CutLink()      the first site's nodes drop every packet to/from the
//	               second site's nodes (CutSites(a, b): any two sites)
//	Heal()         flushes every rule
//
// The namespaces, veths and the bridge are removed by StopAll.

// ErrNetns: network namespaces are unavailable (not root, no `ip`).
var ErrNetns = errors.New("harness: network namespaces unavailable")

type netnsSetup struct {
	prefix string // qtcXXXX
	bridge string
	hostIP string
	subnet string            // 10.213.X
	ns     map[string]string // node ID → namespace
	ip     map[string]string // node ID → address
}

// NetnsAvailable reports whether this process can create namespaces.
func NetnsAvailable() bool {
	if os.Geteuid() != 0 {
		return false
	}
	_, err1 := exec.LookPath("ip")
	_, err2 := exec.LookPath("iptables")
	return err1 == nil && err2 == nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newNetns creates the bridge and one namespace per node (IDs by site, in
// order). Names and the subnet derive from key (the work directory), so a
// cluster restarted on the same directory gets the same addresses.
func newNetns(key string, sites map[string][]string, order []string) (*netnsSetup, error) {
	if !NetnsAvailable() {
		return nil, fmt.Errorf("%w: need root, ip and iptables", ErrNetns)
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	v := h.Sum32()
	b := []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8)}
	s := &netnsSetup{
		prefix: "qtc" + hex.EncodeToString(b[:2]),
		subnet: "10.213." + strconv.Itoa(int(b[2])),
		ns:     map[string]string{}, ip: map[string]string{},
	}
	s.bridge = s.prefix + "br"
	s.hostIP = s.subnet + ".1"
	cmds := [][]string{
		{"ip", "link", "add", s.bridge, "type", "bridge"},
		{"ip", "addr", "add", s.hostIP + "/24", "dev", s.bridge},
		{"ip", "link", "set", s.bridge, "up"},
		// Bridged traffic may cross the host's FORWARD chain (br_netfilter).
		{"iptables", "-I", "FORWARD", "-i", s.bridge, "-o", s.bridge, "-j", "ACCEPT"},
	}
	for _, c := range cmds {
		if err := run(c[0], c[1:]...); err != nil {
			s.remove()
			return nil, err
		}
	}
	idx := 0
	for si, site := range order {
		for i, id := range sites[site] {
			idx++
			ns := fmt.Sprintf("%sn%d", s.prefix, idx)
			vh, vn := fmt.Sprintf("%sh%d", s.prefix, idx), fmt.Sprintf("%sv%d", s.prefix, idx)
			ip := fmt.Sprintf("%s.%d", s.subnet, 10+si*50+i+1)
			s.ns[id], s.ip[id] = ns, ip
			for _, c := range [][]string{
				{"ip", "netns", "add", ns},
				{"ip", "link", "add", vh, "type", "veth", "peer", "name", vn},
				{"ip", "link", "set", vh, "master", s.bridge},
				{"ip", "link", "set", vh, "up"},
				{"ip", "link", "set", vn, "netns", ns},
				{"ip", "-n", ns, "addr", "add", ip + "/24", "dev", vn},
				{"ip", "-n", ns, "link", "set", vn, "up"},
				{"ip", "-n", ns, "link", "set", "lo", "up"},
			} {
				if err := run(c[0], c[1:]...); err != nil {
					s.remove()
					return nil, err
				}
			}
		}
	}
	return s, nil
}

// remove deletes namespaces (and their veths), the bridge and the FORWARD rule.
func (s *netnsSetup) remove() {
	for _, ns := range s.ns {
		_ = run("ip", "netns", "del", ns)
	}
	_ = run("iptables", "-D", "FORWARD", "-i", s.bridge, "-o", s.bridge, "-j", "ACCEPT")
	_ = run("ip", "link", "del", s.bridge)
}

func (s *netnsSetup) drop(id string, peers []string) error {
	ns := s.ns[id]
	for _, p := range peers {
		ip := s.ip[p]
		if err := run("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", ip, "-j", "DROP"); err != nil {
			return err
		}
		if err := run("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", ip, "-j", "DROP"); err != nil {
			return err
		}
	}
	return nil
}

// Isolate cuts node id off from the other nodes of its site (Netns only).
// Clients still reach it.
func (c *Cluster) Isolate(id string) error {
	if c.netns == nil {
		return fmt.Errorf("%w: cluster not started with Options.Netns", ErrNetns)
	}
	n := c.Layout.Node(id)
	if n == nil {
		return fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	var peers []string
	for _, p := range c.Nodes(n.KMEID) {
		if p != id {
			peers = append(peers, p)
		}
	}
	return c.netns.drop(id, peers)
}

// CutLink cuts every connection between the first two sites (Netns
// only).
func (c *Cluster) CutLink() error { return c.CutSites(c.Sender(), c.Receiver()) }

// CutSites cuts every connection between sites a and b (Netns only).
func (c *Cluster) CutSites(a, b string) error {
	if c.netns == nil {
		return fmt.Errorf("%w: cluster not started with Options.Netns", ErrNetns)
	}
	if c.Layout.Site(a) == nil || c.Layout.Site(b) == nil || a == b {
		return fmt.Errorf("%w: sites %q and %q", ErrUnknownNode, a, b)
	}
	for _, id := range c.Nodes(a) {
		if err := c.netns.drop(id, c.Nodes(b)); err != nil {
			return err
		}
	}
	return nil
}

// Heal removes every fault rule (Netns only).
func (c *Cluster) Heal() error {
	if c.netns == nil {
		return fmt.Errorf("%w: cluster not started with Options.Netns", ErrNetns)
	}
	var errs []error
	for _, ns := range c.netns.ns {
		for _, chain := range []string{"INPUT", "OUTPUT"} {
			errs = append(errs, run("ip", "netns", "exec", ns, "iptables", "-F", chain))
		}
	}
	return errors.Join(errs...)
}

// netnsAddr is node id's address in netns mode.
func (s *netnsSetup) addr(id string, port int) string {
	return net.JoinHostPort(s.ip[id], strconv.Itoa(port))
}

// newNetnsCluster lays out a cluster whose nodes live in namespaces.
func newNetnsCluster(o Options) (*Cluster, error) {
	sites := map[string][]string{}
	order := o.Sites
	if len(order) > 4 || o.Nodes > 49 {
		return nil, fmt.Errorf("%w: network namespaces take at most 4 sites of 49 nodes", ErrNetns)
	}
	for _, s := range order {
		for i := 1; i <= o.Nodes; i++ {
			sites[s] = append(sites[s], NodeID(s, i))
		}
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLayout, err)
	}
	ns, err := newNetns(abs, sites, order)
	if err != nil {
		return nil, err
	}
	seedPort := map[string]int{}
	specs := make([]SiteSpec, len(order))
	for i, s := range order {
		seedPort[s] = 8000 + i
		specs[i] = SiteSpec{KMEID: s, Nodes: o.Nodes, BasePort: 8443}
	}
	lo := o.layout(specs)
	lo.AdvertiseFn = func(s SiteSpec, i int) string { return ns.addr(NodeID(s.KMEID, i), 8443) }
	lo.SeedFn = func(s SiteSpec, i int) string {
		if !o.Seed || i != 1 {
			return ""
		}
		return ns.addr(NodeID(s.KMEID, i), seedPort[s.KMEID])
	}
	l, err := Generate(lo)
	if err != nil {
		ns.remove()
		return nil, err
	}
	for _, s := range l.Sites {
		for _, n := range s.Nodes {
			n.Netns = ns.ns[n.ID]
		}
	}
	return &Cluster{opts: o, Layout: l, log: o.Logger, procs: map[string]*proc{}, https: map[string]*http.Client{}, netns: ns}, nil
}
