// Package harness runs qkdkms sites (two by default, or any number ≥ 2
// joined in a line or a ring of QKD links) of N nodes each as local
// processes (or attaches to the docker-compose deployment) and gives the
// rest of testcluster what etcd's robustness tests get from their e2e
// framework: the layout and PKI, start/stop/kill/SIGSTOP of a node, its
// network cut by namespaces and its disk filled on a tmpfs (the fault
// mechanisms testcluster/faults schedules), leaders, metrics, FSM digests
// and the seed/admin calls that set a run up.
//
// It links no plotting, workload or experiment code: the server binary
// imports it (through testcluster/demo) for `qkdkms demo` and
// `qkdkms demo-init` (README, Quick start).
//
// The on-disk layout it writes (and RunDemo / DemoInit reuse):
//
//	DIR/pki/            ca.crt ca.key, NODE.crt/.key per node, SAE certs,
//	                    operator-KME.crt/.key (admin), harness-KME.crt/.key
//	                    (a kme:<KME> identity for internal calls)
//	DIR/kek/KME.kek     the site key-encryption key (hex, 0600)
//	DIR/config/NODE.json node configuration (node/CONFIG.md format)
//	DIR/data/NODE/      node data directory (Raft log, snapshots)
//	DIR/logs/NODE.log   node stdout+stderr (appended across restarts)
package harness

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"qkdkms/etsi/pki"
)

// Default KME IDs, as in the seed.
const (
	DefaultSender   = "sender_app"
	DefaultReceiver = "receiver_app"
)

// ErrLayout wraps layout generation errors.
var ErrLayout = errors.New("harness: layout")

// SiteSpec describes one site to generate.
type SiteSpec struct {
	KMEID string
	Nodes int // 1, 3 or 5
	// BasePort is the TLS port of node 1; node i listens on BasePort+i-1.
	BasePort int
	// SeedPort is the plain-HTTP seed API port of node 1 (0 = off).
	SeedPort int
	// Host is the address nodes bind and advertise (default 127.0.0.1).
	Host string
}

// LayoutOptions describes the sites and where to write them.
type LayoutOptions struct {
	Dir   string
	Sites []SiteSpec
	// Topology is how Link joins the sites, in the order of Sites:
	// TopologyLine (default) or TopologyRing (≥ 3 sites). Every site
	// lists every other in its peers (classical messages reach them all);
	// a site's links[] has a QKD link to its neighbours and driver "none"
	// for the others, whose keys trusted nodes relay.
	Topology string
	// SAEs get client certificates (besides the connection SAEs the caller
	// uses); e.g. "ghi", "jkl".
	SAEs []string
	// Raft timing written into every config ("" = node defaults).
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout string
	// NoSync disables Raft fsync (tests only).
	NoSync bool
	// Snapshot tuning ("" / 0 = node defaults).
	SnapshotInterval  string
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// LogLevel of the nodes (default info).
	LogLevel string
	// Naming, for the compose deployment: hostname of node i of a site and
	// the address it binds. Nil = Host:port for both.
	AdvertiseFn func(site SiteSpec, i int) string
	ListenFn    func(site SiteSpec, i int) string
	SeedFn      func(site SiteSpec, i int) string
	// PathFn maps a path under Dir to the path the node sees (compose: the
	// same files mounted elsewhere). Nil = identity.
	PathFn func(string) string
	// ExtraHosts are added to every node certificate.
	ExtraHosts []string
	// Link, when set, joins the sites by QKD links (node link.* settings);
	// Generate writes one pre-shared link secret, kept across runs.
	Link *LinkSpec
}

// LinkSpec configures the QKD links of a layout.
type LinkSpec struct {
	PluginDir string  // as the node sees it ("" with Native)
	Native    bool    // step code natively instead of WASM
	FiberKm   float64 // simulated fiber length (0 = node default, 25 km)
	BlockBits int     // sifted bits per session (0 = node default)
	// Links are each site's links[] entries (node/CONFIG.md, "Link
	// drivers"), by the site's KME ID: the driver per peer and its
	// options. A neighbour without an entry uses the simulator; Generate
	// adds driver "none" for the sites that are not neighbours.
	Links map[string][]PeerLink
	// RelayPoolBytes is the relay pool target per direction of every QKD
	// link (links[].relay_pool_bytes; 0 = no relay key) and RelayShare
	// the share of a link's fresh key that goes to it while it is short
	// (links[].relay_share; 0 = the node's default).
	RelayPoolBytes int64
	RelayShare     float64
}

// PeerLink is one entry of a node's links[]: the driver of the link to
// Peer and its options (JSON, as the node sees them). Driver DriverNone
// means Peer is reached for classical messages only: no QKD link.
type PeerLink struct {
	Peer           string          `json:"peer"`
	Driver         string          `json:"driver"`
	Options        json.RawMessage `json:"options,omitempty"`
	RelayShare     float64         `json:"relay_share,omitempty"`
	RelayPoolBytes int64           `json:"relay_pool_bytes,omitempty"`
}

// DriverNone is the links[] driver of a peer without a QKD link.
const DriverNone = "none"

// Topologies of the QKD links between the sites.
const (
	TopologyLine = "line" // site i linked to i+1
	TopologyRing = "ring" // a line whose last site is linked to the first
)

// TopologyLinks lists the QKD links of sites joined by topology, each
// pair in the order of sites (the ring's closing link last).
func TopologyLinks(sites []string, topology string) ([][2]string, error) {
	if len(sites) < 2 {
		return nil, fmt.Errorf("%w: %d sites: need at least 2", ErrLayout, len(sites))
	}
	var out [][2]string
	for i := 0; i+1 < len(sites); i++ {
		out = append(out, [2]string{sites[i], sites[i+1]})
	}
	switch topology {
	case "", TopologyLine:
	case TopologyRing:
		if len(sites) < 3 {
			return nil, fmt.Errorf("%w: a ring needs at least 3 sites, have %d", ErrLayout, len(sites))
		}
		out = append(out, [2]string{sites[len(sites)-1], sites[0]})
	default:
		return nil, fmt.Errorf("%w: unknown topology %q (line or ring)", ErrLayout, topology)
	}
	return out, nil
}

// Layout is what Generate wrote.
type Layout struct {
	Dir    string
	PKIDir string
	Sites  []*Site
	// Links are the site pairs joined by a QKD link (TopologyLinks; none
	// without LayoutOptions.Link).
	Links [][2]string
}

// Site is one generated site.
type Site struct {
	KMEID string
	Nodes []*NodeSpec
	// SeedAddr is the seed API address of the site ("" = off).
	SeedAddr string
	KEKFile  string
}

// NodeSpec is one generated node.
type NodeSpec struct {
	ID         string // node ID, e.g. sender_app-1
	KMEID      string
	Index      int // 1-based within the site
	Listen     string
	Advertise  string
	SeedListen string
	ConfigPath string
	DataDir    string
	LogPath    string
	// Netns, when set, runs the node inside this network namespace
	// (`ip netns exec`); see netns.go.
	Netns string
}

// Addr is the address the harness dials (the advertised address).
func (n *NodeSpec) Addr() string { return n.Advertise }

// NodeID names node i (1-based) of a site.
func NodeID(kmeID string, i int) string { return kmeID + "-" + strconv.Itoa(i) }

// configFile mirrors node.Config's JSON format (node/CONFIG.md); the node
// parses it strictly, so only documented fields appear here.
type configFile struct {
	NodeID     string              `json:"node_id"`
	KMEID      string              `json:"kme_id"`
	Listen     string              `json:"listen"`
	Advertise  string              `json:"advertise"`
	DataDir    string              `json:"data_dir"`
	TLS        tlsFiles            `json:"tls"`
	KEKFile    string              `json:"kek_file"`
	Bootstrap  map[string]string   `json:"bootstrap"`
	Peers      map[string][]string `json:"peers"`
	SeedListen string              `json:"seed_listen,omitempty"`
	Raft       raftTiming          `json:"raft"`
	Log        logConfig           `json:"log"`
	Link       *linkConfig         `json:"link,omitempty"`
	Links      []PeerLink          `json:"links,omitempty"`
}

type linkConfig struct {
	PSKFile   string  `json:"psk_file"`
	PluginDir string  `json:"plugin_dir,omitempty"`
	Native    bool    `json:"native,omitempty"`
	FiberKm   float64 `json:"fiber_km,omitempty"`
	BlockBits int     `json:"block_bits,omitempty"`
}

type tlsFiles struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

type raftTiming struct {
	HeartbeatTimeout   string `json:"heartbeat_timeout,omitempty"`
	ElectionTimeout    string `json:"election_timeout,omitempty"`
	LeaderLeaseTimeout string `json:"leader_lease_timeout,omitempty"`
	SnapshotInterval   string `json:"snapshot_interval,omitempty"`
	SnapshotThreshold  uint64 `json:"snapshot_threshold,omitempty"`
	TrailingLogs       uint64 `json:"trailing_logs,omitempty"`
	NoSync             bool   `json:"no_sync,omitempty"`
}

type logConfig struct {
	Level  string `json:"level,omitempty"`
	Format string `json:"format,omitempty"`
}

// OperatorName is the operator certificate name for a site's admin calls.
func OperatorName(kmeID string) string { return "operator-" + kmeID }

// HarnessName is the certificate carrying kme:<KME> used by the harness for
// same-site internal calls (block import).
func HarnessName(kmeID string) string { return "harness-" + kmeID }

// Generate writes (or completes) the PKI, KEKs and configs under o.Dir.
// Existing CA, certificates and KEKs are kept, so a second run keeps the
// site's data readable; configs are rewritten.
func Generate(o LayoutOptions) (*Layout, error) {
	if o.Dir == "" || len(o.Sites) == 0 {
		return nil, fmt.Errorf("%w: dir and sites are required", ErrLayout)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLayout, err)
	}
	pathFn := o.PathFn
	if pathFn == nil {
		pathFn = func(s string) string { return s }
	}
	ids := make([]string, len(o.Sites))
	seen := map[string]bool{}
	for i, s := range o.Sites {
		if s.KMEID == "" || seen[s.KMEID] {
			return nil, fmt.Errorf("%w: site %d: KME ID %q empty or not unique", ErrLayout, i+1, s.KMEID)
		}
		seen[s.KMEID] = true
		ids[i] = s.KMEID
	}
	l := &Layout{Dir: dir, PKIDir: filepath.Join(dir, "pki")}
	if o.Link != nil && len(ids) >= 2 {
		if l.Links, err = TopologyLinks(ids, o.Topology); err != nil {
			return nil, err
		}
	}
	for _, sub := range []string{"pki", "kek", "config", "data", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrLayout, err)
		}
	}
	ca, err := pki.Init(l.PKIDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLayout, err)
	}
	for _, s := range o.Sites {
		if s.Nodes < 1 {
			return nil, fmt.Errorf("%w: site %s: nodes must be ≥ 1", ErrLayout, s.KMEID)
		}
		if s.Host == "" {
			s.Host = "127.0.0.1"
		}
		site := &Site{KMEID: s.KMEID, KEKFile: filepath.Join(dir, "kek", s.KMEID+".kek")}
		if err := writeKEK(site.KEKFile); err != nil {
			return nil, err
		}
		for i := 1; i <= s.Nodes; i++ {
			n := &NodeSpec{ID: NodeID(s.KMEID, i), KMEID: s.KMEID, Index: i}
			n.Advertise = net.JoinHostPort(s.Host, strconv.Itoa(s.BasePort+i-1))
			if o.AdvertiseFn != nil {
				n.Advertise = o.AdvertiseFn(s, i)
			}
			n.Listen = n.Advertise
			if o.ListenFn != nil {
				n.Listen = o.ListenFn(s, i)
			}
			switch {
			case o.SeedFn != nil:
				n.SeedListen = o.SeedFn(s, i)
			case s.SeedPort != 0 && i == 1:
				n.SeedListen = net.JoinHostPort(s.Host, strconv.Itoa(s.SeedPort))
			}
			if n.SeedListen != "" && site.SeedAddr == "" {
				site.SeedAddr = n.SeedListen
			}
			n.ConfigPath = filepath.Join(dir, "config", n.ID+".json")
			n.DataDir = filepath.Join(dir, "data", n.ID)
			n.LogPath = filepath.Join(dir, "logs", n.ID+".log")
			host, _, _ := net.SplitHostPort(n.Advertise)
			hosts := append([]string{host}, o.ExtraHosts...)
			if err := issueOnce(l.PKIDir, n.ID, func() (pki.Leaf, error) { return ca.IssueNode(n.ID, s.KMEID, hosts) }); err != nil {
				return nil, err
			}
			site.Nodes = append(site.Nodes, n)
		}
		if err := issueOnce(l.PKIDir, OperatorName(s.KMEID), func() (pki.Leaf, error) {
			return ca.IssueOperator(OperatorName(s.KMEID), s.KMEID)
		}); err != nil {
			return nil, err
		}
		if err := issueOnce(l.PKIDir, HarnessName(s.KMEID), func() (pki.Leaf, error) {
			return ca.IssueNode(HarnessName(s.KMEID), s.KMEID, nil)
		}); err != nil {
			return nil, err
		}
		l.Sites = append(l.Sites, site)
	}
	for _, sae := range o.SAEs {
		if err := issueOnce(l.PKIDir, sae, func() (pki.Leaf, error) { return ca.IssueSAE(sae) }); err != nil {
			return nil, err
		}
	}
	var lc *linkConfig
	if o.Link != nil {
		psk := filepath.Join(dir, "kek", "link.psk")
		if err := writeSecret(psk, 64<<10); err != nil {
			return nil, err
		}
		lc = &linkConfig{PSKFile: pathFn(psk), PluginDir: o.Link.PluginDir, Native: o.Link.Native,
			FiberKm: o.Link.FiberKm, BlockBits: o.Link.BlockBits}
	}
	// Configs: every node lists its site (bootstrap) and the other sites (peers).
	for _, site := range l.Sites {
		boot := map[string]string{}
		for _, n := range site.Nodes {
			boot[n.ID] = n.Advertise
		}
		peers := map[string][]string{}
		for _, other := range l.Sites {
			if other.KMEID == site.KMEID {
				continue
			}
			for _, n := range other.Nodes {
				peers[other.KMEID] = append(peers[other.KMEID], n.Advertise)
			}
		}
		for _, n := range site.Nodes {
			cf := configFile{
				NodeID: n.ID, KMEID: n.KMEID, Listen: n.Listen, Advertise: n.Advertise,
				DataDir: pathFn(n.DataDir),
				TLS: tlsFiles{
					CA:   pathFn(filepath.Join(l.PKIDir, "ca.crt")),
					Cert: pathFn(filepath.Join(l.PKIDir, n.ID+".crt")),
					Key:  pathFn(filepath.Join(l.PKIDir, n.ID+".key")),
				},
				KEKFile:    pathFn(site.KEKFile),
				Bootstrap:  boot,
				Peers:      peers,
				SeedListen: n.SeedListen,
				Raft: raftTiming{
					HeartbeatTimeout: o.HeartbeatTimeout, ElectionTimeout: o.ElectionTimeout,
					LeaderLeaseTimeout: o.LeaderLeaseTimeout, NoSync: o.NoSync,
					SnapshotInterval: o.SnapshotInterval, SnapshotThreshold: o.SnapshotThreshold, TrailingLogs: o.TrailingLogs,
				},
				Log:  logConfig{Level: o.LogLevel},
				Link: lc,
			}
			if o.Link != nil {
				cf.Links = l.peerLinks(site.KMEID, o.Link)
			}
			b, err := json.MarshalIndent(cf, "", "  ")
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrLayout, err)
			}
			if err := os.WriteFile(n.ConfigPath, append(b, '\n'), 0o600); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrLayout, err)
			}
		}
	}
	return l, nil
}

// peerLinks is the links[] of site: with two sites and no relay
// settings, the caller's entries alone (a neighbour without one runs the
// node's default, sim with link.fiber_km, as before topologies existed);
// otherwise one entry per other site, in site order: the caller's entry or
// sim for a neighbour, with the relay settings, and DriverNone for the
// others.
func (l *Layout) peerLinks(site string, ls *LinkSpec) []PeerLink {
	given := ls.Links[site]
	if len(l.Sites) == 2 && ls.RelayPoolBytes == 0 && ls.RelayShare == 0 {
		return given
	}
	var out []PeerLink
	for _, other := range l.Sites {
		if other.KMEID == site {
			continue
		}
		if !l.Linked(site, other.KMEID) {
			out = append(out, PeerLink{Peer: other.KMEID, Driver: DriverNone})
			continue
		}
		pl := PeerLink{Peer: other.KMEID, Driver: "sim"}
		if ls.FiberKm != 0 {
			pl.Options, _ = json.Marshal(map[string]float64{"fiber_km": ls.FiberKm})
		}
		for _, g := range given {
			if g.Peer == other.KMEID {
				pl = g
			}
		}
		if pl.RelayPoolBytes == 0 && pl.RelayShare == 0 {
			pl.RelayPoolBytes, pl.RelayShare = ls.RelayPoolBytes, ls.RelayShare
		}
		out = append(out, pl)
	}
	return out
}

// Linked reports whether sites a and b share a QKD link.
func (l *Layout) Linked(a, b string) bool {
	for _, p := range l.Links {
		if (p[0] == a && p[1] == b) || (p[0] == b && p[1] == a) {
			return true
		}
	}
	return false
}

// Neighbours lists the sites that share a QKD link with site, in site
// order.
func (l *Layout) Neighbours(site string) []string {
	var out []string
	for _, s := range l.Sites {
		if s.KMEID != site && l.Linked(site, s.KMEID) {
			out = append(out, s.KMEID)
		}
	}
	return out
}

// Site returns the site with KME ID id, or nil.
func (l *Layout) Site(id string) *Site {
	for _, s := range l.Sites {
		if s.KMEID == id {
			return s
		}
	}
	return nil
}

// Node returns the node with ID id, or nil.
func (l *Layout) Node(id string) *NodeSpec {
	for _, s := range l.Sites {
		for _, n := range s.Nodes {
			if n.ID == id {
				return n
			}
		}
	}
	return nil
}

// Addrs lists the advertised addresses of a site's nodes.
func (s *Site) Addrs() []string {
	out := make([]string, len(s.Nodes))
	for i, n := range s.Nodes {
		out[i] = n.Advertise
	}
	return out
}

// issueOnce writes dir/name.{crt,key} unless both already exist.
func issueOnce(dir, name string, issue func() (pki.Leaf, error)) error {
	_, e1 := os.Stat(filepath.Join(dir, name+".crt"))
	_, e2 := os.Stat(filepath.Join(dir, name+".key"))
	if e1 == nil && e2 == nil {
		return nil
	}
	leaf, err := issue()
	if err != nil {
		return fmt.Errorf("%w: issue %s: %w", ErrLayout, name, err)
	}
	if err := leaf.Write(dir, name); err != nil {
		return fmt.Errorf("%w: %w", ErrLayout, err)
	}
	return nil
}

// writeKEK creates a random 32-byte KEK (hex, mode 0600) unless path exists.
func writeKEK(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w: KEK: %w", ErrLayout, err)
	}
	_, err = f.WriteString(hex.EncodeToString(k) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w: KEK: %w", ErrLayout, err)
	}
	return nil
}

// writeSecret writes n random bytes to path (mode 0600) unless it exists.
func writeSecret(path string, n int) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	b := make([]byte, n)
	_, _ = rand.Read(b)
	defer clear(b)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("%w: link secret: %w", ErrLayout, err)
	}
	return nil
}
