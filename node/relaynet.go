package node

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"qkdkms/node/kme"
	"qkdkms/node/network"
	"qkdkms/raftstore"
)

// relayNet runs the trusted-node relay (node/network, docs/ARCHITECTURE.md
// "Trusted-node relay"): its peer calls are served on every node (they run
// on the leader) and its duty runs while this node leads.
type relayNet struct {
	relay *network.Relay
	duty  leaderDuty
}

// newRelayNet builds the relay of node n; call reaches peer sites (set
// once the KME exists).
func newRelayNet(n *Node, call network.Caller) *relayNet {
	n.metrics.reg.MustRegister(&relayCollector{n: n})
	return &relayNet{relay: network.New(network.Config{
		Local: n.cfg.KMEID,
		Sites: sortedKeys(n.cfg.Peers),
		Links: func() []network.LinkInfo {
			var out []network.LinkInfo
			for _, st := range n.links.statuses() {
				out = append(out, network.LinkInfo{Peer: st.Peer, Up: st.Connected, QBER: st.LastQBER})
			}
			return out
		},
		Store:  n.store,
		Call:   call,
		Logger: n.logger.With("component", "relay"),
	})}
}

// peerOps are the relay's peer calls for the KME's internal endpoint.
func (rn *relayNet) peerOps() map[string]kme.PeerOp {
	out := map[string]kme.PeerOp{}
	for name, f := range rn.relay.Ops() {
		out[name] = kme.PeerOp(f)
	}
	return out
}

// start follows leadership: the duty runs while this node leads.
func (rn *relayNet) start(store *raftstore.Store) { rn.duty.start(store, rn.relay.Run) }

func (rn *relayNet) stop() { rn.duty.stop() }

// networkAdminRoutes serves GET /admin/v1/network: the relay's view of the
// network from the site's leader (network.Status).
func (n *Node) networkAdminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/v1/network", func(w http.ResponseWriter, r *http.Request) {
		n.leaderDo(w, r, nil, func(ctx context.Context) (any, error) {
			if !n.store.IsLeader() {
				return nil, raftstore.ErrNotLeader
			}
			return n.services.relay.relay.Status(ctx), nil
		})
	})
}

// Network returns the site's view of the QKD network (the leader's):
// every site's links, the routes to sites without a direct link, and the
// relay counts.
func (c *AdminClient) Network(ctx context.Context) (network.Status, error) {
	var out network.Status
	err := c.do(ctx, http.MethodGet, "/admin/v1/network", nil, &out)
	return out, err
}

var (
	descRelayBlocks = prometheus.NewDesc("qkdkms_relay_blocks_total",
		"Relayed blocks handled by this node while it led the site: delivered or burned (as the source), forwarded (as an intermediate site), received (as the destination).",
		[]string{"outcome"}, nil)
	descRelayRoute = prometheus.NewDesc("qkdkms_relay_route_width_bytes",
		"Relay key on the narrowest hop of the route the leader would take to a site without a direct link (absent: no route), by destination and route.",
		[]string{"destination", "route"}, nil)
)

// relayCollector exports the relay's counts and routes (leader only).
type relayCollector struct{ n *Node }

func (c *relayCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRelayBlocks
	ch <- descRelayRoute
}

func (c *relayCollector) Collect(ch chan<- prometheus.Metric) {
	if c.n.services == nil || c.n.store == nil || !c.n.store.IsLeader() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st := c.n.services.relay.relay.Status(ctx)
	for outcome, v := range map[string]int64{"delivered": st.Stats.Delivered, "burned": st.Stats.Burned,
		"forwarded": st.Stats.Forwarded, "received": st.Stats.Received} {
		ch <- prometheus.MustNewConstMetric(descRelayBlocks, prometheus.CounterValue, float64(v), outcome)
	}
	for dst, rt := range st.Routes {
		ch <- prometheus.MustNewConstMetric(descRelayRoute, prometheus.GaugeValue, float64(rt.Width), dst, strings.Join(rt.Path, ">"))
	}
}
