package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"qkdkms/etsi/pki"
	"qkdkms/node/link"
	"qkdkms/plugins/host"
	"qkdkms/plugins/steps"
	"qkdkms/quantum"
	"qkdkms/raftstore"
)

// links are this node's QKD links, one per peer site; each runs only while
// this node leads its site.
type links struct {
	n       *Node
	byPeer  map[string]*link.Link
	drivers []quantum.Driver // closed when the links stop
	host    *host.Host       // nil when the step code runs natively
	plug    *pluginSet
	duty    leaderDuty // runs every link while this node leads
}

// newLinks builds the links when link.psk_file is set.
func newLinks(ctx context.Context, n *Node) (*links, error) {
	lc := n.cfg.Link
	if lc.PSKFile == "" {
		return nil, nil
	}
	psk, err := readSecretFile(lc.PSKFile)
	if err != nil {
		return nil, fmt.Errorf("node: link.psk_file: %w", err)
	}
	ls := &links{n: n, byPeer: map[string]*link.Link{}}
	if !lc.Native {
		ls.host, err = host.Open(ctx, lc.PluginDir, host.Options{
			CacheDir: filepath.Join(n.cfg.DataDir, "wazero-cache"),
			Logger:   n.logger.With("component", "plugins"),
		})
		if err != nil {
			return nil, fmt.Errorf("node: link.plugin_dir: %w", err)
		}
	}
	ls.plug = &pluginSet{store: n.store, host: ls.host}
	for _, peer := range sortedKeys(n.cfg.Peers) {
		pl := n.cfg.LinkFor(peer)
		if pl.Driver == DriverNone {
			continue // no QKD link: keys to its SAEs come by relay
		}
		drv, err := quantum.Open(pl.Driver, pl.Options)
		if err != nil {
			ls.closeDrivers()
			return nil, fmt.Errorf("node: links[%s]: %w", peer, err)
		}
		ls.drivers = append(ls.drivers, drv)
		verify := requireKME(peer)
		dialCfg := func(host string) *tls.Config { return n.tlsr.clientConfig(host, []string{link.ALPN}, verify) }
		l, err := link.New(link.Config{
			LocalKME: n.cfg.KMEID, PeerKME: peer, PeerAddrs: n.cfg.Peers[peer],
			Store: n.store, Plugins: ls.plug, Driver: drv, PSK: psk,
			BlockBits:      lc.BlockBits,
			RelayPoolBytes: pl.RelayPoolBytes, RelayShare: pl.Share(),
			Dial:   dialer(n, dialCfg),
			Logger: n.logger.With("component", "link"),
		})
		if err != nil {
			ls.closeDrivers()
			return nil, err
		}
		ls.byPeer[peer] = l
	}
	return ls, nil
}

// dialer dials a peer's link with the node's current TLS material
// (tlsreload.go): cfg builds the config for the host dialled.
func dialer(n *Node, cfg func(host string) *tls.Config) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		raw, err := n.conns.dial(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		h, _, err := net.SplitHostPort(addr)
		if err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("node: link dial %s: %w", addr, err)
		}
		tc := tls.Client(raw, cfg(h))
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		if tc.ConnectionState().NegotiatedProtocol != link.ALPN {
			_ = tc.Close()
			return nil, fmt.Errorf("node: %s did not accept %s", addr, link.ALPN)
		}
		return tc, nil
	}
}

// start follows leadership: the links run while this node leads.
func (ls *links) start() {
	duties := make([]func(context.Context), 0, len(ls.byPeer))
	for _, l := range ls.byPeer {
		duties = append(duties, l.Run)
	}
	ls.duty.start(ls.n.store, duties...)
}

func (ls *links) stop() {
	ls.duty.stop()
	if ls.host != nil {
		_ = ls.host.Close(context.Background())
	}
	ls.closeDrivers()
}

func (ls *links) closeDrivers() {
	for _, d := range ls.drivers {
		_ = d.Close()
	}
	ls.drivers = nil
}

// serve hands an accepted link connection to the link of the peer its
// certificate names.
func (ls *links) serve(c *tls.Conn) {
	st := c.ConnectionState()
	peer := ""
	if len(st.PeerCertificates) > 0 {
		peer = pki.KMEID(st.PeerCertificates[0])
	}
	l := ls.byPeer[peer]
	if l == nil {
		ls.n.logger.Warn("refused link connection from a site with no QKD link here (not a peer, or driver none)", "peer", peer,
			"remote", c.RemoteAddr().String())
		_ = c.Close()
		return
	}
	l.Serve(c)
}

// statuses lists every link's status, sorted by peer.
func (ls *links) statuses() []link.Status {
	if ls == nil {
		return nil
	}
	out := make([]link.Status, 0, len(ls.byPeer))
	for _, l := range ls.byPeer {
		out = append(out, l.Status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// pluginSet resolves plugin selections: the active one is site state in
// Raft (set by `qkdkms plugin use`), the modules come from the plugin
// directory and from modules installed into the site (`qkdkms plugin
// install`), which are loaded into the host on first use.
type pluginSet struct {
	store *raftstore.Store
	host  *host.Host // nil: native step code
	mu    sync.Mutex
}

func (p *pluginSet) Active(ctx context.Context) (host.Selection, error) {
	st, err := p.store.Plugins(ctx)
	if err != nil {
		return nil, err
	}
	sel := host.Selection{}
	for _, k := range steps.Kinds {
		if name, ok := st.Active[string(k)]; ok {
			sel[k] = name
		}
	}
	return sel, nil
}

func (p *pluginSet) Runner(sel host.Selection) (host.Runner, error) {
	if p.host == nil {
		return host.Native(sel)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.loadInstalled(sel); err != nil {
		return nil, err
	}
	return p.host.Runner(sel)
}

// loadInstalled adds site-installed modules named in sel to the host, or
// replaces one the host holds with other content (removed and installed
// again under the same name).
func (p *pluginSet) loadInstalled(sel host.Selection) error {
	have := map[string]string{}
	for _, info := range p.host.Plugins() {
		have[info.Name] = info.SHA256
	}
	for kind, name := range sel {
		sum, installed := p.store.PluginDigest(name)
		if cur, ok := have[name]; ok && (!installed || cur == sum) {
			continue
		}
		ctx := context.Background()
		mod, err := p.store.PluginModule(ctx, name)
		if err != nil {
			return fmt.Errorf("node: plugin %s for step %s: %w", name, kind, err)
		}
		info := host.Info{Name: mod.Name, Kind: steps.Kind(mod.Step), Version: mod.Version, ABI: mod.ABI, SHA256: mod.SHA256}
		if err := p.host.Add(ctx, info, mod.WASM); err != nil {
			return fmt.Errorf("node: load installed plugin %s: %w", name, err)
		}
	}
	return nil
}

// readSecretFile reads a secret file that must not be readable by others.
func readSecretFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %v; secrets must be 0600", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, errors.New("empty file")
	}
	return b, nil
}
