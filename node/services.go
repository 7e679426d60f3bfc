package node

import (
	"context"
	"net/http"

	"qkdkms/etsi"
	"qkdkms/node/kme"
	"qkdkms/raftstore"
)

// services are the handlers and background duties built on the store:
// the KME backend (leader forwarding, inter-KME protocol, block import),
// the ETSI handler on it, and the seed-compatible handler.
type services struct {
	kme        *kme.KME
	etsi       http.Handler // /api/v1/keys/
	internal   http.Handler // /internal/
	adminExtra http.Handler // /admin/v1/blocks
	seed       http.Handler // plain-HTTP seed listener
	relay      *relayNet    // trusted-node relay (relaynet.go)
	store      *raftstore.Store
}

// newServices builds the KME backend. peerClient presents the node
// certificate and requires a kme: identity of the server (same-site
// forwarding and peer sites; the KME checks which one per call).
func newServices(n *Node, peerClient *http.Client) *services {
	var k *kme.KME
	relay := newRelayNet(n, func(ctx context.Context, site, op string, in, out any) error {
		return k.CallPeer(ctx, site, op, in, out)
	})
	k = kme.New(kme.Config{
		KMEID:      n.cfg.KMEID,
		Site:       n.store,
		Peers:      n.cfg.Peers,
		HTTPClient: peerClient,
		Logger:     n.logger.With("component", "kme"),

		MaxConnections: n.cfg.MaxConnections,
		PeerOps:        relay.peerOps(),
		Issued: func(master, slave string, keys int) {
			n.metrics.keysIssued.WithLabelValues(master, slave).Add(float64(keys))
		},
	})
	s := &services{
		kme:        k,
		relay:      relay,
		store:      n.store,
		internal:   k.InternalHandler(),
		adminExtra: k.AdminHandler(),
		etsi: etsi.NewHandler(k, etsi.Options{
			Audit: n.audit,
			Log:   n.logger.With("component", "etsi"),
		}),
	}
	if n.cfg.SeedListen != "" {
		s.seed = etsi.NewSeedHandler(k, n.audit)
	}
	return s
}

func (s *services) start() { s.relay.start(s.store) }

func (s *services) stop() {
	s.relay.stop()
	if s.kme != nil {
		_ = s.kme.Close()
	}
}
