package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Self-bootstrapping sites (node/CONFIG.md, Discovery): a node whose
// node_id ends in its ordinal ("<statefulset>-<n>") finds the other nodes
// of its site through DNS SRV records (a Kubernetes headless Service) and
// forms or joins the site itself:
//
//   - a node with Raft state starts as it is, and joins again only when
//     the site's configuration no longer lists it at its address;
//   - ordinal 0 without state bootstraps a one-voter site, unless a node it
//     finds has state (its own volume was lost: it joins instead);
//   - any other node without state joins through the nodes it finds
//     (POST /admin/v1/join, forwarded to the leader), until admitted;
//   - on graceful shutdown, a node whose ordinal is at or above the desired
//     replica count (the StatefulSet's spec.replicas, read then) removes
//     itself from the site: a scale-down takes its voters out.

// Discovery modes.
const (
	DiscoveryOff = ""
	DiscoveryDNS = "dns"
)

// Defaults of the discovery settings (node/CONFIG.md, Discovery).
const (
	DefaultDiscoveryRetry     = 2 * time.Second
	DefaultDiscoveryBootWait  = 30 * time.Second
	DefaultDiscoveryLeaveWait = 10 * time.Second
)

// DiscoveryConfig is the config's "discovery" object.
type DiscoveryConfig struct {
	// Mode is "" (off: the static bootstrap map or `qkdkms join`) or "dns".
	Mode string `json:"mode"`
	// SRV is the DNS name whose SRV records list the site's nodes (target
	// host and port = advertised address). For a StatefulSet's headless
	// Service: _<port name>._tcp.<service>.<namespace>.svc.<cluster domain>.
	SRV string `json:"srv"`
	// StatefulSet names the StatefulSet (in the pod's namespace) whose
	// spec.replicas is the desired size, read at shutdown through the
	// Kubernetes API with the pod's service account. "" = a node never
	// removes itself.
	StatefulSet string `json:"statefulset"`
	// RetryInterval is the wait between two discovery or join attempts
	// (default 2s).
	RetryInterval Duration `json:"retry_interval"`
	// BootstrapWait bounds how long ordinal 0 without state waits for every
	// node it finds to say whether it has state before it bootstraps
	// (default 30s).
	BootstrapWait Duration `json:"bootstrap_wait"`

	// Resolver, when set, replaces net.DefaultResolver (tests).
	Resolver SRVResolver `json:"-"`
	// Replicas, when set, replaces the Kubernetes API as the source of the
	// desired replica count (tests).
	Replicas ReplicaSource `json:"-"`
}

// SRVResolver looks SRV records up; *net.Resolver is one.
type SRVResolver interface {
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
}

// ReplicaSource tells the desired number of nodes of the site.
type ReplicaSource interface {
	DesiredReplicas(ctx context.Context) (int, error)
}

// ReplicaFunc adapts a function to ReplicaSource.
type ReplicaFunc func(ctx context.Context) (int, error)

// DesiredReplicas calls f.
func (f ReplicaFunc) DesiredReplicas(ctx context.Context) (int, error) { return f(ctx) }

func (d DiscoveryConfig) withDefaults() DiscoveryConfig {
	if d.RetryInterval == 0 {
		d.RetryInterval = Duration(DefaultDiscoveryRetry)
	}
	if d.BootstrapWait == 0 {
		d.BootstrapWait = Duration(DefaultDiscoveryBootWait)
	}
	return d
}

// validate reports the discovery section's problems; c is the whole config.
func (d DiscoveryConfig) validate(c Config, add func(string, ...any)) {
	switch d.Mode {
	case DiscoveryOff:
		if d.SRV != "" || d.StatefulSet != "" {
			add("discovery: srv and statefulset need mode \"dns\"")
		}
		return
	case DiscoveryDNS:
	default:
		add("discovery.mode: %q is not \"\" or \"dns\"", d.Mode)
		return
	}
	if d.SRV == "" {
		add("discovery.srv: required with mode \"dns\" (e.g. _https._tcp.qkdkms-peers.default.svc.cluster.local)")
	} else if strings.ContainsAny(d.SRV, " /:\t") {
		add("discovery.srv: %q is not a DNS name", d.SRV)
	}
	if _, err := NodeOrdinal(c.NodeID); err != nil {
		add("discovery: node_id: %v", err)
	}
	if len(c.Bootstrap) > 0 {
		add("discovery: set either bootstrap (a static site) or discovery, not both")
	}
	if d.StatefulSet != "" {
		if err := checkName(d.StatefulSet); err != nil {
			add("discovery.statefulset: %v", err)
		}
	}
	for name, v := range map[string]Duration{"discovery.retry_interval": d.RetryInterval, "discovery.bootstrap_wait": d.BootstrapWait} {
		if v < 0 || (v > 0 && v.D() < 5*time.Millisecond) {
			add("%s: %v is negative or below 5ms", name, v.D())
		}
	}
}

// NodeOrdinal is the ordinal of a node named "<anything>-<n>", as a
// StatefulSet names its pods.
func NodeOrdinal(nodeID string) (int, error) {
	i := strings.LastIndexByte(nodeID, '-')
	if i < 0 || i == len(nodeID)-1 {
		return 0, fmt.Errorf("%q does not end in -<ordinal> (a StatefulSet pod name such as qkdkms-0)", nodeID)
	}
	n, err := strconv.Atoi(nodeID[i+1:])
	if err != nil || n < 0 || strconv.Itoa(n) != nodeID[i+1:] {
		return 0, fmt.Errorf("%q does not end in -<ordinal> (a StatefulSet pod name such as qkdkms-0)", nodeID)
	}
	return n, nil
}

// MembershipResponse is one node's own view (GET /admin/v1/membership, not
// forwarded): whether it holds Raft state, its configuration and leader.
type MembershipResponse struct {
	NodeID   string   `json:"node_id"`
	Address  string   `json:"address"`
	HasState bool     `json:"has_state"`
	Leader   string   `json:"leader"`
	Servers  []Server `json:"servers"`
}

// Membership reads one node's own view of the site.
func (c *AdminClient) Membership(ctx context.Context) (MembershipResponse, error) {
	var out MembershipResponse
	err := c.do(ctx, http.MethodGet, "/admin/v1/membership", nil, &out)
	return out, err
}

// discoveryAdminRoutes adds GET /admin/v1/membership: this node's own view
// (never forwarded), which a starting ordinal 0 asks before it bootstraps.
func (n *Node) discoveryAdminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/v1/membership", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		out, err := n.membership(ctx)
		if err != nil {
			writeAdminError(w, http.StatusServiceUnavailable, CodeUnavailable, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
}

func (n *Node) membership(ctx context.Context) (MembershipResponse, error) {
	ss, err := n.store.Servers(ctx)
	if err != nil {
		return MembershipResponse{}, fmt.Errorf("node: membership: %w", err)
	}
	leaderID, _ := n.store.Leader()
	out := MembershipResponse{NodeID: n.cfg.NodeID, Address: n.cfg.Advertise, HasState: len(ss) > 0, Leader: leaderID, Servers: []Server{}}
	for _, s := range ss {
		out.Servers = append(out.Servers, Server{ID: string(s.ID), Address: string(s.Address), Suffrage: suffrage(s.Suffrage), Leader: string(s.ID) == leaderID})
	}
	return out, nil
}

// discovery runs a node's self-bootstrap (Node.Start) and its leave on
// graceful shutdown (Node.Close).
type discovery struct {
	n        *Node
	cfg      DiscoveryConfig
	ordinal  int
	resolver SRVResolver
	replicas ReplicaSource // nil: never leave

	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	joined bool // this run found or made the node a member
}

func newDiscovery(n *Node) *discovery {
	cfg := n.cfg.Discovery.withDefaults()
	if cfg.Mode != DiscoveryDNS {
		return nil
	}
	ord, _ := NodeOrdinal(n.cfg.NodeID) // validated
	d := &discovery{n: n, cfg: cfg, ordinal: ord, resolver: cfg.Resolver, replicas: cfg.Replicas}
	if d.resolver == nil {
		d.resolver = net.DefaultResolver
	}
	if d.replicas == nil && cfg.StatefulSet != "" {
		d.replicas = &kubeScale{statefulSet: cfg.StatefulSet}
	}
	return d
}

// startDiscovery starts the background membership loop (a no-op without
// discovery).
func (n *Node) startDiscovery() {
	if n.disc = newDiscovery(n); n.disc == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.disc.cancel, n.disc.done = cancel, make(chan struct{})
	go func() {
		defer close(n.disc.done)
		n.disc.run(ctx)
	}()
}

// stopDiscovery ends the membership loop and waits for it.
func (n *Node) stopDiscovery() {
	if n.disc == nil || n.disc.cancel == nil {
		return
	}
	n.disc.cancel()
	<-n.disc.done
}

// Member reports whether the discovery loop has made or found this node a
// member of its site (always true without discovery).
func (n *Node) Member() bool {
	if n.disc == nil {
		return true
	}
	n.disc.mu.Lock()
	defer n.disc.mu.Unlock()
	return n.disc.joined
}

func (d *discovery) log() *slog.Logger { return d.n.logger.With("component", "discovery") }

func (d *discovery) sleep(ctx context.Context) bool {
	t := time.NewTimer(d.cfg.RetryInterval.D())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// peers resolves the SRV name: every node's advertised address, this
// node's own excluded.
func (d *discovery) peers(ctx context.Context) ([]string, error) {
	_, srvs, err := d.resolver.LookupSRV(ctx, "", "", d.cfg.SRV)
	if err != nil {
		return nil, fmt.Errorf("node: discovery: SRV %s: %w", d.cfg.SRV, err)
	}
	var out []string
	for _, s := range srvs {
		a := net.JoinHostPort(strings.TrimSuffix(s.Target, "."), strconv.Itoa(int(s.Port)))
		if a != d.n.cfg.Advertise && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

func (d *discovery) client(addrs []string) *AdminClient {
	return &AdminClient{Addrs: addrs, HTTP: d.n.siteClient}
}

// run loops until the node is a member of its site.
func (d *discovery) run(ctx context.Context) {
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !d.sleep(ctx) {
			return
		}
		done, err := d.step(ctx)
		if done {
			d.mu.Lock()
			d.joined = true
			d.mu.Unlock()
			return
		}
		if err != nil && ctx.Err() == nil && attempt%5 == 0 {
			d.log().Warn("not a member of the site yet; retrying", "err", err, "every", d.cfg.RetryInterval.D())
		}
	}
}

// step makes one attempt; done when the node is a member.
func (d *discovery) step(ctx context.Context) (done bool, err error) {
	self, addr := d.n.cfg.NodeID, d.n.cfg.Advertise
	mine, err := d.n.membership(ctx)
	if err != nil {
		return false, err
	}
	if !mine.HasState && d.ordinal == 0 {
		boot, err := d.shouldBootstrap(ctx)
		if err != nil {
			return false, err
		}
		if boot {
			f := d.n.store.Raft().BootstrapCluster(raft.Configuration{Servers: []raft.Server{
				{Suffrage: raft.Voter, ID: raft.ServerID(self), Address: raft.ServerAddress(addr)}}})
			if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
				return false, fmt.Errorf("node: discovery: bootstrap: %w", err)
			}
			d.log().Info("ordinal 0 without state: bootstrapped the site (one voter); the others join it", "address", addr)
			return true, nil
		}
	}
	peers, err := d.peers(ctx)
	if err != nil {
		return false, err
	}
	if len(peers) == 0 {
		return false, fmt.Errorf("node: discovery: SRV %s lists no other node", d.cfg.SRV)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c := d.client(peers)
	site, err := c.Servers(rctx)
	if err != nil {
		return false, err
	}
	member := false
	for _, s := range site.Servers {
		if s.ID == self && s.Address == addr && s.Suffrage == "voter" {
			member = true
		}
	}
	if member && mine.HasState {
		d.log().Info("member of the site", "leader", site.Leader, "servers", len(site.Servers))
		return true, nil
	}
	if member {
		// Listed, but this node holds nothing: its volume was lost (or it
		// was added and stopped before any entry reached it). A voter that
		// forgot what it acknowledged must not count towards a quorum: go
		// out, then in again as a new, empty member.
		d.log().Warn("listed as a voter but without Raft state: removing and adding this node again")
		if _, err := c.Remove(rctx, self); err != nil {
			return false, err
		}
	}
	if _, err := c.Join(rctx, self, addr); err != nil {
		return false, err
	}
	d.log().Info("joined the site", "address", addr, "through", peers)
	return true, nil
}

// shouldBootstrap: ordinal 0 without state founds the site unless a node it
// finds holds state (then it joins). It waits (bootstrap_wait at most) for
// every node the SRV records list to answer.
func (d *discovery) shouldBootstrap(ctx context.Context) (bool, error) {
	deadline := time.Now().Add(d.cfg.BootstrapWait.D())
	for {
		peers, err := d.peers(ctx)
		if err != nil && time.Now().Before(deadline) {
			return false, err // retried by run
		}
		answered := 0
		for _, p := range peers {
			pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			m, err := d.client([]string{p}).Membership(pctx)
			cancel()
			if err != nil {
				continue
			}
			if m.HasState {
				d.log().Info("ordinal 0 without state, but a node has state: joining the site instead of founding one", "node", m.NodeID)
				return false, nil
			}
			answered++
		}
		if answered == len(peers) {
			return true, nil
		}
		if !time.Now().Before(deadline) {
			d.log().Warn("not every node answered within discovery.bootstrap_wait; bootstrapping", "answered", answered, "found", len(peers))
			return true, nil
		}
		if !d.sleep(ctx) {
			return false, ctx.Err()
		}
	}
}

// leaveIfScaledDown runs first in a graceful Close: when the desired
// replica count is known, at least 1 and not above this node's ordinal,
// the node removes itself from the site (through the leader) so that the
// scale-down leaves no voter behind that never answers. Errors are logged:
// the shutdown goes on.
func (n *Node) leaveIfScaledDown(ctx context.Context) {
	d := n.disc
	if d == nil || d.replicas == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, DefaultDiscoveryLeaveWait)
	defer cancel()
	want, err := d.replicas.DesiredReplicas(ctx)
	if err != nil {
		d.log().Warn("shutdown: desired replica count unknown; staying a member", "err", err)
		return
	}
	if want < 1 || d.ordinal < want {
		return
	}
	d.log().Info("shutdown: scaled down below this node's ordinal; leaving the site", "ordinal", d.ordinal, "replicas", want)
	for {
		err := n.leaveOnce(ctx)
		if err == nil {
			d.log().Info("shutdown: left the site")
			return
		}
		if !d.sleep(ctx) {
			d.log().Warn("shutdown: could not leave the site; remove it with `qkdkms remove`", "err", err)
			return
		}
	}
}

func (n *Node) leaveOnce(ctx context.Context) error {
	if n.store.IsLeader() {
		// Raft commits the configuration without this node, then the
		// leader steps down; the others elect a new one.
		return n.store.Remove(ctx, n.cfg.NodeID)
	}
	peers, err := n.disc.peers(ctx)
	if err != nil {
		return err
	}
	if len(peers) == 0 {
		return errors.New("node: discovery: no other node to ask")
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = n.disc.client(peers).Remove(rctx, n.cfg.NodeID)
	return err
}

// kubeScale reads spec.replicas of a StatefulSet in the pod's own
// namespace through the scale subresource of the Kubernetes API, with the
// pod's service account (in-cluster: KUBERNETES_SERVICE_HOST/PORT, the
// token, CA and namespace files). RBAC: get on statefulsets/scale.
type kubeScale struct {
	statefulSet string
	// dir is the service account directory (default
	// /var/run/secrets/kubernetes.io/serviceaccount); apiBase overrides
	// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (tests).
	dir, apiBase string
}

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func (k *kubeScale) DesiredReplicas(ctx context.Context) (int, error) {
	dir := k.dir
	if dir == "" {
		dir = serviceAccountDir
	}
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("node: kubernetes service account: %w", err)
		}
		return b, nil
	}
	token, err := read("token")
	if err != nil {
		return 0, err
	}
	ns, err := read("namespace")
	if err != nil {
		return 0, err
	}
	caPEM, err := read("ca.crt")
	if err != nil {
		return 0, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return 0, errors.New("node: kubernetes service account: ca.crt holds no certificate")
	}
	base := k.apiBase
	if base == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return 0, errors.New("node: not in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT unset)")
		}
		base = "https://" + net.JoinHostPort(host, port)
	}
	url := fmt.Sprintf("%s/apis/apps/v1/namespaces/%s/statefulsets/%s/scale", base, strings.TrimSpace(string(ns)), k.statefulSet)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("node: kubernetes scale request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("node: kubernetes scale of %s: %w", k.statefulSet, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("node: kubernetes scale of %s: %w", k.statefulSet, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("node: kubernetes scale of %s: %s: %.200s", k.statefulSet, resp.Status, b)
	}
	var scale struct {
		Spec struct {
			Replicas *int `json:"replicas"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(b, &scale); err != nil || scale.Spec.Replicas == nil {
		return 0, fmt.Errorf("node: kubernetes scale of %s: no spec.replicas in %.200s (%v)", k.statefulSet, b, err)
	}
	return *scale.Spec.Replicas, nil
}
