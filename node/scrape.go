package node

import (
	"fmt"
	"net/http"
	"slices"
)

// requireScraper guards /metrics: its per-connection series name every
// SAE pair of the site, so only this site's nodes (kme:<kme_id>), its
// operators (kme-admin:<kme_id>) and the certificates carrying one of
// metrics.scrape_identities may read it. Everyone else — SAEs above all,
// also peer sites' nodes and other sites' operators — gets 403 with a JSON
// error body and no series at all (node/CONFIG.md, Health and metrics).
func (n *Node) requireScraper(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !n.mayScrape(r) {
			writeAdminError(w, http.StatusForbidden, CodeForbidden,
				fmt.Sprintf("/metrics needs a certificate with kme:%s, kme-admin:%s or one of metrics.scrape_identities", n.cfg.KMEID, n.cfg.KMEID))
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (n *Node) mayScrape(r *http.Request) bool {
	if n.isAdmin(r) {
		return true
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	uris := r.TLS.PeerCertificates[0].URIs
	for _, u := range uris {
		// A certificate naming an SAE never scrapes, whatever else it
		// carries (checkScrapeIdentity also refuses sae: entries).
		if u.Scheme == "sae" {
			return false
		}
	}
	for _, u := range uris {
		if slices.Contains(n.cfg.Metrics.ScrapeIdentities, u.String()) {
			return true
		}
	}
	return false
}
