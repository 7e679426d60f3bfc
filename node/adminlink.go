package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"

	"qkdkms/node/link"
	"qkdkms/plugins/host"
	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/all"
	"qkdkms/raftstore"
)

// Admin API for QKD links and step plugins (same authorization as the rest
// of /admin/v1/; every call runs on the leader, proxied by followers):
//
//	GET  /admin/v1/link                    → []link.Status
//	POST /admin/v1/link/eve  EveRequest    → []link.Status
//	GET  /admin/v1/plugins                 → PluginsResponse
//	POST /admin/v1/plugins/install InstallRequest → PluginsResponse
//	POST /admin/v1/plugins/use UseRequest  → PluginsResponse

// MaxPluginBytes bounds an installed WASM module.
const MaxPluginBytes = 32 << 20

// EveRequest turns the simulated intercept-resend eavesdropper on the fiber
// to Peer on (P > 0) or off (P = 0).
type EveRequest struct {
	Peer string  `json:"peer"`
	P    float64 `json:"p"`
}

// InstallRequest stores a WASM step plugin in the site.
type InstallRequest struct {
	Name    string `json:"name"`
	Step    string `json:"step"`
	Version string `json:"version"`
	ABI     int    `json:"abi"`
	SHA256  string `json:"sha256"` // hex; must match the module
	WASM    []byte `json:"wasm"`   // base64 in JSON
}

// UseRequest makes Plugin the site's choice for Step. Plugin is NAME or
// NAME@VERSION.
type UseRequest struct {
	Step   string `json:"step"`
	Plugin string `json:"plugin"`
}

// PluginRemoveRequest removes an installed plugin: NAME or NAME@VERSION.
type PluginRemoveRequest struct {
	Plugin string `json:"plugin"`
}

// PluginInfo is one plugin the site can run.
type PluginInfo struct {
	Name    string `json:"name"`
	Step    string `json:"step"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
	Source  string `json:"source"` // shipped (plugin dir / native) or installed (Raft)
	Active  bool   `json:"active"`
}

// PluginsResponse lists the plugins and the active choice per step.
type PluginsResponse struct {
	KMEID   string            `json:"kme_id"`
	Active  map[string]string `json:"active"` // step → plugin name (default: the first shipped)
	Plugins []PluginInfo      `json:"plugins"`
}

func (n *Node) linkAdminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/v1/link", func(w http.ResponseWriter, r *http.Request) {
		n.leaderDo(w, r, nil, func(ctx context.Context) (any, error) {
			if !n.store.IsLeader() {
				return nil, raftstore.ErrNotLeader
			}
			return n.links.statuses(), nil
		})
	})
	adminPost(n, mux, "/admin/v1/link/eve", adminBodyLimit, nil, func(ctx context.Context, req EveRequest) (any, error) {
		if !n.store.IsLeader() {
			return nil, raftstore.ErrNotLeader
		}
		l, err := n.linkTo(req.Peer)
		if err != nil {
			return nil, err
		}
		if err := l.SetEve(req.P); err != nil {
			return nil, badRequest("%v", err)
		}
		n.logger.Warn("simulated eavesdropper changed", "peer", req.Peer, "p", req.P)
		return n.links.statuses(), nil
	})
	mux.HandleFunc("GET /admin/v1/plugins", func(w http.ResponseWriter, r *http.Request) {
		n.leaderDo(w, r, nil, func(ctx context.Context) (any, error) { return n.pluginList(ctx) })
	})
	// Each plugin change answers the plugin list after it.
	adminPost(n, mux, "/admin/v1/plugins/install", 2*MaxPluginBytes, nil, thenPluginList(n, n.installPlugin))
	adminPost(n, mux, "/admin/v1/plugins/remove", adminBodyLimit, nil, thenPluginList(n, n.removePlugin))
	adminPost(n, mux, "/admin/v1/plugins/use", adminBodyLimit, nil, thenPluginList(n, n.usePlugin))
}

func thenPluginList[Req any](n *Node, change func(context.Context, Req) error) func(context.Context, Req) (any, error) {
	return func(ctx context.Context, req Req) (any, error) {
		if err := change(ctx, req); err != nil {
			return nil, err
		}
		return n.pluginList(ctx)
	}
}

func (n *Node) linkTo(peer string) (*link.Link, error) {
	if n.links == nil {
		return nil, badRequest("no QKD link is configured on this site (link.psk_file)")
	}
	l := n.links.byPeer[peer]
	if l == nil && n.cfg.Peers[peer] != nil && n.cfg.LinkFor(peer).Driver == DriverNone {
		return nil, badRequest("no QKD link to %q: its links[] driver is %q (keys to it come by relay)", peer, DriverNone)
	}
	if l == nil {
		return nil, badRequest("no link to %q", peer)
	}
	return l, nil
}

// shipped lists the plugins the node runs without installation.
func (n *Node) shipped() []host.Info {
	if n.links == nil {
		return nil
	}
	if n.links.host != nil {
		return n.links.host.Plugins()
	}
	var out []host.Info
	for _, p := range all.Plugins {
		out = append(out, host.Info{Name: p.Name, Kind: p.Kind, Version: p.Version})
	}
	return out
}

func (n *Node) pluginList(ctx context.Context) (PluginsResponse, error) {
	st, err := n.store.Plugins(ctx)
	if err != nil {
		return PluginsResponse{}, err
	}
	resp := PluginsResponse{KMEID: n.cfg.KMEID, Active: map[string]string{}}
	installed := map[string]bool{}
	for _, m := range st.Installed {
		installed[m.Name] = true
	}
	for _, info := range n.shipped() {
		if installed[info.Name] {
			continue // an installed module loaded into the host
		}
		resp.Plugins = append(resp.Plugins, PluginInfo{Name: info.Name, Step: string(info.Kind), Version: info.Version, SHA256: info.SHA256, Source: "shipped"})
	}
	for _, m := range st.Installed {
		resp.Plugins = append(resp.Plugins, PluginInfo{Name: m.Name, Step: m.Step, Version: m.Version, SHA256: m.SHA256, Source: "installed"})
	}
	for _, k := range steps.Kinds {
		name := st.Active[string(k)]
		if name == "" {
			for _, p := range resp.Plugins {
				if p.Step == string(k) && p.Source == "shipped" {
					name = p.Name
					break
				}
			}
		}
		resp.Active[string(k)] = name
		for i := range resp.Plugins {
			if resp.Plugins[i].Step == string(k) && resp.Plugins[i].Name == name {
				resp.Plugins[i].Active = true
			}
		}
	}
	return resp, nil
}

func (n *Node) installPlugin(ctx context.Context, req InstallRequest) error {
	if !n.store.IsLeader() {
		return raftstore.ErrNotLeader
	}
	if n.links == nil || n.links.host == nil {
		return badRequest("this site runs no WASM plugins (link.psk_file unset or link.native on)")
	}
	if len(req.WASM) == 0 || len(req.WASM) > MaxPluginBytes {
		return badRequest("wasm: %d bytes (1 to %d)", len(req.WASM), MaxPluginBytes)
	}
	sum := sha256.Sum256(req.WASM)
	if req.SHA256 != "" && !strings.EqualFold(req.SHA256, hex.EncodeToString(sum[:])) {
		return badRequest("sha256 %s does not match the module (%x)", req.SHA256, sum)
	}
	for _, info := range n.shipped() {
		if info.Name == req.Name && info.SHA256 != hex.EncodeToString(sum[:]) {
			return badRequest("name %q is taken by a shipped plugin; install under another name", req.Name)
		}
	}
	info := host.Info{Name: req.Name, Kind: steps.Kind(req.Step), Version: req.Version, ABI: req.ABI, SHA256: hex.EncodeToString(sum[:])}
	// Admission: the module must load (hash, ABI, exports) and run its
	// step's smoke input correctly under a short deadline before it enters
	// the site; a module the host refuses never reaches Raft.
	if err := host.Admit(ctx, info, req.WASM, host.Options{
		CacheDir: filepath.Join(n.cfg.DataDir, "wazero-cache"),
		Logger:   n.logger.With("component", "plugins"),
	}); err != nil {
		if errors.Is(err, host.ErrRefused) || errors.Is(err, host.ErrABI) || errors.Is(err, host.ErrHash) || errors.Is(err, host.ErrManifest) {
			return badRequest("%v", err)
		}
		return err
	}
	if err := n.store.InstallPlugin(ctx, raftstore.PluginModule{
		Name: req.Name, Step: req.Step, Version: req.Version, ABI: req.ABI, SHA256: info.SHA256, WASM: req.WASM,
	}); err != nil {
		return err
	}
	n.logger.Info("plugin installed", "name", req.Name, "step", req.Step, "version", req.Version, "sha256", info.SHA256)
	return nil
}

func (n *Node) usePlugin(ctx context.Context, req UseRequest) error {
	name, version, _ := strings.Cut(req.Plugin, "@")
	list, err := n.pluginList(ctx)
	if err != nil {
		return err
	}
	for _, p := range list.Plugins {
		if p.Name != name {
			continue
		}
		if p.Step != req.Step {
			return badRequest("plugin %s is a %s step, not %s", name, p.Step, req.Step)
		}
		if version != "" && version != p.Version {
			return badRequest("plugin %s has version %s, not %s", name, p.Version, version)
		}
		if err := n.store.UsePlugin(ctx, req.Step, name); err != nil {
			return err
		}
		n.logger.Info("plugin selected", "step", req.Step, "plugin", name, "version", p.Version)
		return nil
	}
	return badRequest("no plugin %q on this site (see GET /admin/v1/plugins)", req.Plugin)
}

// removePlugin drops a module installed into the site that no step of this
// site selects and no link of this leader last agreed on with its peer.
// Shipped plugins cannot be removed.
func (n *Node) removePlugin(ctx context.Context, req PluginRemoveRequest) error {
	if !n.store.IsLeader() {
		return raftstore.ErrNotLeader
	}
	name, version, _ := strings.Cut(req.Plugin, "@")
	if name == "" {
		return badRequest("plugin: want NAME@VERSION")
	}
	list, err := n.pluginList(ctx)
	if err != nil {
		return err
	}
	for _, p := range list.Plugins {
		if p.Name != name {
			continue
		}
		if p.Source != "installed" {
			return badRequest("plugin %s is shipped with the node, not installed; it cannot be removed", name)
		}
		if version != "" && version != p.Version {
			return badRequest("plugin %s has version %s, not %s", name, p.Version, version)
		}
		if p.Active {
			return badRequest("plugin %s is active for step %s; select another first (qkdkms plugin use)", name, p.Step)
		}
		if n.links != nil {
			for _, l := range n.links.byPeer {
				if l.UsesPlugin(name) {
					return badRequest("plugin %s is in the plugin set last agreed with %s; wait until the link runs the new set", name, l.Status().Peer)
				}
			}
		}
		if err := n.store.RemovePlugin(ctx, name); err != nil {
			return err
		}
		n.logger.Info("plugin removed", "name", name, "version", p.Version, "sha256", p.SHA256)
		return nil
	}
	return badRequest("no plugin %q on this site (see GET /admin/v1/plugins)", req.Plugin)
}

// badRequestError is an admin request the node refuses as invalid (400):
// it matches raftstore.ErrInvalid for leaderDo's mapping but reads as its
// own message.
type badRequestError struct{ msg string }

func (e *badRequestError) Error() string        { return e.msg }
func (e *badRequestError) Is(target error) bool { return target == raftstore.ErrInvalid }

func badRequest(format string, a ...any) error {
	return &badRequestError{msg: fmt.Sprintf(format, a...)}
}
