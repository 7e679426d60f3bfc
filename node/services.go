package node

import "net/http"

// services are the handlers and background duties built on the store.
// Handlers left nil are not mounted.
type services struct {
	etsi       http.Handler // /api/v1/keys/
	internal   http.Handler // /internal/
	adminExtra http.Handler // /admin/v1/blocks
	seed       http.Handler // plain-HTTP seed listener
	stopFns    []func()
}

func newServices(n *Node, peerClient *http.Client) *services {
	return &services{}
}

func (s *services) start() {}

func (s *services) stop() {
	for _, f := range s.stopFns {
		f()
	}
}
