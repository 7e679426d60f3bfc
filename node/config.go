package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"qkdkms/quantum"
)

// ErrConfig wraps every configuration validation error.
var ErrConfig = errors.New("node: invalid config")

// Defaults for Config fields left empty. Documented in node/CONFIG.md.
const (
	DefaultListen    = "127.0.0.1:8443"
	DefaultLogLevel  = "info"
	DefaultLogFormat = "text"
	DefaultFiberKm   = 25.0
	// DefaultTLSReloadInterval is how often a node looks for changed
	// tls.ca, tls.cert, tls.key and tls.crl_file (node/CONFIG.md, Rotation
	// and revocation).
	DefaultTLSReloadInterval = 5 * time.Second
)

// Config is a node's configuration: a JSON file (strict: unknown fields are
// an error) with flags overriding it. Every field is documented with its
// default in node/CONFIG.md.
type Config struct {
	// NodeID is the Raft server ID, unique within the site. Required.
	NodeID string `json:"node_id"`
	// KMEID is the site's KME ID; node certificates carry it as kme:<KMEID>. Required.
	KMEID string `json:"kme_id"`
	// Listen is the one TLS port: ETSI API, admin, internal, metrics and Raft.
	Listen string `json:"listen"`
	// Advertise is the host:port other nodes dial (Raft address = API
	// address). Default: Listen, which then must not be a wildcard address.
	Advertise string `json:"advertise"`
	// DataDir holds the Raft log, stable store and snapshots. Required.
	DataDir string `json:"data_dir"`
	// TLS is the node's PKI material.
	TLS TLSFiles `json:"tls"`
	// KEKFile is a file holding the site key-encryption key (mode 0600).
	KEKFile string `json:"kek_file"`
	// KEKEnv names an environment variable holding the KEK (hex), used when
	// KEKFile is empty.
	KEKEnv string `json:"kek_env"`
	// Bootstrap is the static site: node ID → advertised address, the same
	// on every node. Empty for a node that will be joined at run time.
	Bootstrap map[string]string `json:"bootstrap"`
	// Peers are the other sites: KME ID → addresses of its nodes.
	Peers map[string][]string `json:"peers"`
	// SeedListen is the plain-HTTP seed-compatible listener ("" = off).
	SeedListen string `json:"seed_listen"`
	// MaxConnections caps the connections the site holds (0: 64, the
	// default); a registration beyond it is refused (node/CONFIG.md).
	MaxConnections int `json:"max_connections"`
	// Raft timing and durability.
	Raft RaftTiming `json:"raft"`
	// Log output.
	Log LogConfig `json:"log"`
	// Link runs QKD links to the peer sites; off unless link.psk_file is set.
	Link LinkConfig `json:"link"`
	// Metrics says who may read /metrics besides this site's nodes and
	// operators.
	Metrics MetricsConfig `json:"metrics"`
	// HTTP bounds the HTTP servers: timeouts, connections per listener,
	// header size (node/CONFIG.md, HTTP limits).
	HTTP HTTPLimits `json:"http"`
	// Discovery forms or joins the site through DNS SRV records instead of
	// the static bootstrap map (node/CONFIG.md, Discovery; discovery.go).
	Discovery DiscoveryConfig `json:"discovery"`
	// Links chooses each peer's link driver and its options; a peer
	// without an entry gets the "sim" driver with link.fiber_km and
	// link.eve (node/CONFIG.md, "Link drivers").
	Links []PeerLink `json:"links"`

	// Listener, when set, is used instead of binding Listen (tests and
	// embedding; not part of the file format).
	Listener net.Listener `json:"-"`
	// SeedListener, when set, is used instead of binding SeedListen (tests
	// and embedding; not part of the file format).
	SeedListener net.Listener `json:"-"`
	// Logger, when set, receives every log record instead of stderr (tests
	// and embedding; log.level/log.format then do not apply to it).
	Logger *slog.Logger `json:"-"`
	// RaftTransport, when set, carries Raft instead of the node's port
	// (tests run whole nodes on raftstore/storetest's in-memory
	// transport; not part of the file format). Its address must be
	// Advertise, where the node serves everything else. The node does not
	// close it.
	RaftTransport raft.Transport `json:"-"`
}

// TLSFiles are paths to PEM files.
type TLSFiles struct {
	CA   string `json:"ca"`   // CA bundle that signs nodes, SAEs and operators
	Cert string `json:"cert"` // node certificate (carries kme:<KME ID>)
	Key  string `json:"key"`  // node private key
	// CRLFile is a PEM X.509 CRL (one or more "X509 CRL" blocks) signed by
	// a CA of the bundle; a certificate whose serial it lists is refused at
	// its next handshake, on every listener and dial. "" = no CRL.
	CRLFile string `json:"crl_file"`
	// ReloadInterval is how often the node checks the four files for a
	// change and reloads them (SIGHUP reloads at once). Default 5s.
	ReloadInterval Duration `json:"reload_interval"`
}

// MetricsConfig configures who may read /metrics (node/CONFIG.md, Health
// and metrics).
type MetricsConfig struct {
	// ScrapeIdentities are URI SANs (e.g. "metrics:prometheus"); a client
	// certificate of the CA carrying one of them may read /metrics, as
	// this site's nodes and operators may. Never an sae: identity.
	ScrapeIdentities []string `json:"scrape_identities"`
}

// RaftTiming tunes hashicorp/raft. Zero values take raft's defaults.
type RaftTiming struct {
	HeartbeatTimeout   Duration `json:"heartbeat_timeout"`
	ElectionTimeout    Duration `json:"election_timeout"`
	LeaderLeaseTimeout Duration `json:"leader_lease_timeout"`
	SnapshotInterval   Duration `json:"snapshot_interval"`
	SnapshotThreshold  uint64   `json:"snapshot_threshold"`
	TrailingLogs       uint64   `json:"trailing_logs"`
	// NoSync disables fsync of the Raft log (tests only: loses I4).
	NoSync bool `json:"no_sync"`
}

// LinkConfig configures the QKD links to the sites in Peers: BB84 over the
// simulated quantum channel with the step plugins, run by the leaders.
type LinkConfig struct {
	// PSKFile holds the pre-shared authentication secret of the links
	// (identical file at both sites, mode 0600; see `qkdkms psk`). Empty:
	// no QKD link, keys reach pools only through the admin block import.
	PSKFile string `json:"psk_file"`
	// PluginDir holds manifest.json and the step plugins (`make plugins`
	// writes bin/plugins).
	PluginDir string `json:"plugin_dir"`
	// Native runs the shipped step code natively instead of as WASM.
	Native bool `json:"native"`
	// FiberKm is the simulated fiber length in km (default 25).
	FiberKm float64 `json:"fiber_km"`
	// BlockBits is the target sifted key block per session (default 400000).
	BlockBits int `json:"block_bits"`
	// Eve is the initial fraction of pulses an intercept-resend eavesdropper
	// attacks on the simulated fiber (default 0; settable at run time).
	Eve float64 `json:"eve"`
}

// PeerLink is one peer site's QKD link driver and its relay pool.
type PeerLink struct {
	Peer string `json:"peer"` // a KME ID of Peers
	// Driver is a registered driver (sim, devstream, etsi014), or "none":
	// the peer is reachable for classical messages but there is no QKD
	// link to it (keys to its SAEs come by relay).
	Driver  string          `json:"driver"`
	Options json.RawMessage `json:"options,omitempty"` // the driver's options (node/CONFIG.md)
	// RelayPoolBytes is the relay key the link keeps per direction for
	// one-time-pad relaying (0: none; node/CONFIG.md, "Relay pool").
	RelayPoolBytes int `json:"relay_pool_bytes,omitempty"`
	// RelayShare is the fraction of each session's final key (beside the
	// pad top-up) that goes to the relay pool while it is below
	// RelayPoolBytes; nil means DefaultRelayShare.
	RelayShare *float64 `json:"relay_share,omitempty"`
}

// DriverNone is the links[].driver of a peer without a QKD link.
const DriverNone = "none"

// DefaultRelayShare is links[].relay_share when relay_pool_bytes is set.
const DefaultRelayShare = 0.5

// Share is the link's relay share: relay_share, or DefaultRelayShare when
// unset.
func (l PeerLink) Share() float64 {
	if l.RelayShare == nil {
		return DefaultRelayShare
	}
	return *l.RelayShare
}

// LinkFor is the driver choice for a peer: its entry in Links, or the
// "sim" driver with the link section's fiber length and eavesdropper.
func (c Config) LinkFor(peer string) PeerLink {
	for _, l := range c.Links {
		if l.Peer == peer {
			if l.Driver == "" {
				l.Driver = "sim"
			}
			return l
		}
	}
	opts, _ := json.Marshal(map[string]float64{"fiber_km": c.Link.FiberKm, "eve": c.Link.Eve})
	return PeerLink{Peer: peer, Driver: "sim", Options: opts}
}

// LogConfig selects log level, format and the audit stream.
type LogConfig struct {
	Level     string `json:"level"`      // debug, info, warn, error
	Format    string `json:"format"`     // text or json
	AuditFile string `json:"audit_file"` // ETSI audit records ("" = main log)
}

// Duration is a duration written as a string ("1s", "500ms"), the same
// type as the drivers' options use.
type Duration = quantum.Duration

// LoadConfig reads a JSON config file strictly: unknown fields, trailing
// data and duplicate top-level keys are errors. It does not validate; call
// Validate after applying flags.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes a JSON config strictly.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("%w: trailing data after the JSON object", ErrConfig)
	}
	return c, nil
}

// WithDefaults fills empty fields with their defaults.
func (c Config) WithDefaults() Config {
	if c.Listen == "" && c.Listener == nil {
		c.Listen = DefaultListen
	}
	if c.Advertise == "" {
		switch {
		case c.Listener != nil:
			c.Advertise = c.Listener.Addr().String()
		default:
			c.Advertise = c.Listen
		}
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	}
	if c.Link.FiberKm == 0 {
		c.Link.FiberKm = DefaultFiberKm
	}
	if c.TLS.ReloadInterval == 0 {
		c.TLS.ReloadInterval = Duration(DefaultTLSReloadInterval)
	}
	c.HTTP = c.HTTP.withDefaults()
	return c
}

// Validate checks a config (after WithDefaults) and reports every problem
// found, each naming its field.
func (c Config) Validate() error {
	var errs []string
	add := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	c.HTTP.validate(add)
	c.Discovery.validate(c, add)
	if err := checkName(c.NodeID); err != nil {
		add("node_id: %v", err)
	}
	if err := checkName(c.KMEID); err != nil {
		add("kme_id: %v", err)
	}
	if c.Listener == nil {
		if err := checkHostPort(c.Listen, true); err != nil {
			add("listen: %v", err)
		}
	}
	if err := checkHostPort(c.Advertise, false); err != nil {
		add("advertise: %v", err)
	}
	if c.RaftTransport != nil && string(c.RaftTransport.LocalAddr()) != c.Advertise {
		add("the Raft transport's address %s differs from advertise %s", c.RaftTransport.LocalAddr(), c.Advertise)
	}
	if c.DataDir == "" {
		add("data_dir: required")
	}
	if c.TLS.CA == "" {
		add("tls.ca: required")
	}
	if c.TLS.Cert == "" {
		add("tls.cert: required")
	}
	if c.TLS.Key == "" {
		add("tls.key: required")
	}
	if c.KEKFile == "" && c.KEKEnv == "" {
		add("kek_file or kek_env: one is required")
	}
	if c.KEKFile != "" && c.KEKEnv != "" {
		add("kek_file and kek_env: set only one")
	}
	if len(c.Bootstrap) > 0 {
		addrs := map[string]string{}
		for _, id := range sortedKeys(c.Bootstrap) {
			a := c.Bootstrap[id]
			if err := checkName(id); err != nil {
				add("bootstrap: node %q: %v", id, err)
			}
			if err := checkHostPort(a, false); err != nil {
				add("bootstrap.%s: %v", id, err)
			}
			if other, dup := addrs[a]; dup {
				add("bootstrap: nodes %q and %q share address %s", other, id, a)
			}
			addrs[a] = id
		}
		if a, ok := c.Bootstrap[c.NodeID]; !ok {
			add("bootstrap: does not list this node %q (every node of a static site lists all nodes; a node joined later lists none)", c.NodeID)
		} else if a != c.Advertise {
			add("bootstrap.%s: address %s differs from advertise %s", c.NodeID, a, c.Advertise)
		}
	}
	for _, kme := range sortedKeys(c.Peers) {
		if err := checkName(kme); err != nil {
			add("peers: KME %q: %v", kme, err)
		}
		if kme == c.KMEID {
			add("peers: %q is this site's own KME ID", kme)
		}
		if len(c.Peers[kme]) == 0 {
			add("peers.%s: no addresses", kme)
		}
		for _, a := range c.Peers[kme] {
			if err := checkHostPort(a, false); err != nil {
				add("peers.%s: %v", kme, err)
			}
		}
	}
	if c.SeedListen != "" {
		if err := checkHostPort(c.SeedListen, true); err != nil {
			add("seed_listen: %v", err)
		}
		if c.SeedListen == c.Listen {
			add("seed_listen: same address as listen")
		}
	}
	if c.MaxConnections < 0 {
		add("max_connections: %d is negative (0 means the default, 64)", c.MaxConnections)
	}
	r := c.Raft
	for name, d := range map[string]Duration{
		"raft.heartbeat_timeout": r.HeartbeatTimeout, "raft.election_timeout": r.ElectionTimeout,
		"raft.leader_lease_timeout": r.LeaderLeaseTimeout, "raft.snapshot_interval": r.SnapshotInterval,
		"tls.reload_interval": c.TLS.ReloadInterval,
	} {
		if d < 0 {
			add("%s: negative", name)
		} else if d > 0 && d.D() < 5*time.Millisecond {
			add("%s: %v is below 5ms", name, d.D())
		}
	}
	if r.LeaderLeaseTimeout > 0 && r.HeartbeatTimeout > 0 && r.LeaderLeaseTimeout > r.HeartbeatTimeout {
		add("raft.leader_lease_timeout (%v) must not exceed raft.heartbeat_timeout (%v)", r.LeaderLeaseTimeout.D(), r.HeartbeatTimeout.D())
	}
	if r.ElectionTimeout > 0 && r.HeartbeatTimeout > 0 && r.ElectionTimeout < r.HeartbeatTimeout {
		add("raft.election_timeout (%v) must not be below raft.heartbeat_timeout (%v)", r.ElectionTimeout.D(), r.HeartbeatTimeout.D())
	}
	if c.Link.PSKFile != "" {
		if len(c.Peers) == 0 {
			add("link.psk_file: set but no peers to link to")
		}
		if c.Link.PluginDir == "" && !c.Link.Native {
			add("link.plugin_dir: required unless link.native is true")
		}
		if c.Link.FiberKm < 0 || c.Link.FiberKm > 400 {
			add("link.fiber_km: %v outside [0, 400]", c.Link.FiberKm)
		}
		if c.Link.BlockBits < 0 || (c.Link.BlockBits > 0 && c.Link.BlockBits < 10_000) {
			add("link.block_bits: %d is below 10000 (the finite-key bound leaves no key)", c.Link.BlockBits)
		}
		if c.Link.Eve < 0 || c.Link.Eve > 1 {
			add("link.eve: %v outside [0, 1]", c.Link.Eve)
		}
		for _, peer := range sortedKeys(c.Peers) {
			pl := c.LinkFor(peer)
			if pl.Driver == DriverNone {
				if len(pl.Options) > 0 && string(pl.Options) != "null" {
					add("links[%s]: driver %q takes no options", peer, DriverNone)
				}
				continue
			}
			d, err := quantum.Open(pl.Driver, pl.Options)
			if err != nil {
				add("links[%s]: %v", peer, err)
				continue
			}
			_ = d.Close()
		}
	}
	seen := map[string]bool{}
	for i, l := range c.Links {
		switch {
		case c.Peers[l.Peer] == nil:
			add("links[%d].peer: %q is not a site in peers", i, l.Peer)
		case seen[l.Peer]:
			add("links[%d].peer: %q has a second entry", i, l.Peer)
		case c.Link.PSKFile == "" && l.Driver != DriverNone:
			add("links[%d]: set but link.psk_file is not (no link runs)", i)
		}
		seen[l.Peer] = true
		switch {
		case l.Driver == DriverNone && (l.RelayPoolBytes != 0 || l.RelayShare != nil):
			add("links[%d]: relay_pool_bytes and relay_share need a QKD link; driver %q has none", i, DriverNone)
		case l.RelayPoolBytes < 0:
			add("links[%d].relay_pool_bytes: %d is negative (0 means no relay key)", i, l.RelayPoolBytes)
		case l.RelayShare != nil && !(*l.RelayShare >= 0 && *l.RelayShare <= 1):
			add("links[%d].relay_share: %v outside [0, 1]", i, *l.RelayShare)
		}
	}
	for i, id := range c.Metrics.ScrapeIdentities {
		if err := checkScrapeIdentity(id); err != nil {
			add("metrics.scrape_identities[%d]: %v", i, err)
		}
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		add("log.level: %q is not debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format: %q is not text or json", c.Log.Format)
	}
	if len(errs) == 0 {
		return nil
	}
	sort.Strings(errs)
	return fmt.Errorf("%w:\n  %s", ErrConfig, strings.Join(errs, "\n  "))
}

// checkScrapeIdentity accepts a URI SAN written as the certificate carries
// it ("scheme:opaque" or an absolute URI), never an SAE's: SAEs are tenants
// and read no metrics (node/CONFIG.md, Health and metrics).
func checkScrapeIdentity(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || (u.Opaque == "" && u.Host == "" && u.Path == "") || u.String() != s {
		return fmt.Errorf("%q is not a URI SAN such as \"metrics:prometheus\"", s)
	}
	if u.Scheme == "sae" {
		return fmt.Errorf("%q is an SAE identity: SAEs may not read /metrics", s)
	}
	return nil
}

func checkName(s string) error {
	if s == "" {
		return errors.New("required")
	}
	if len(s) > 128 || strings.ContainsAny(s, "/\\: \t\n\x00") {
		return fmt.Errorf("%q: 1-128 characters, no '/', '\\', ':' or whitespace", s)
	}
	return nil
}

// checkHostPort accepts host:port; a wildcard or empty host only when
// listening (wildcard=true).
func checkHostPort(s string, wildcard bool) error {
	if s == "" {
		return errors.New("required (host:port)")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", s, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 || (!wildcard && p == 0) {
		return fmt.Errorf("%q: bad port", s)
	}
	if !wildcard {
		if host == "" {
			return fmt.Errorf("%q: host required (other nodes dial this address)", s)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("%q: wildcard address cannot be dialled; set an address other nodes can reach", s)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
