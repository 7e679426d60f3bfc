package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"qkdkms/node/network"
	"qkdkms/testcluster/harness"
)

// Network scenarios (trusted-node relay, docs/ARCHITECTURE.md "Trusted-node
// relay"): Sites sites joined by simulated QKD links in a line or a ring,
// the workload's master SAE at the first site and its slave at the site
// two hops on (NetworkSites), so every key is relayed through a middle
// site; the pools fill from the relay alone.
func init() {
	for _, sc := range []Scenario{
		{
			Name: "relay-mid-leader-kill", Sites: 3, Topology: "line", Rate: 5,
			Description: "3 sites in a line, keys relayed through the middle site: SIGKILL the middle site's leader mid-relay, restart it 1 s later; 3 s on, again",
			Fault: func(ctx context.Context, e *Env) error {
				for range 2 {
					if !Sleep(ctx, 3*time.Second) {
						return nil
					}
					se := *e
					se.Site = e.Sites[1]
					if err := killRestart(ctx, &se, "", time.Second); err != nil {
						return fmt.Errorf("fault: %w", err)
					}
				}
				return nil
			},
		},
		{
			Name: "relay-line-site-down", Sites: 3, Topology: "line", Rate: 5,
			Description: "3 sites in a line: every node of the middle site down for 6 s (no other route: the relay pauses), then restarted (it resumes)",
			Fault: func(ctx context.Context, e *Env) error {
				Sleep(ctx, 3*time.Second)
				return siteDown(ctx, e, e.Sites[1], 6*time.Second)
			},
		},
		{
			Name: "relay-ring-site-down", Sites: 4, Topology: "ring", Rate: 5,
			Description: "4 sites in a ring, keys relayed from site 1 to site 3: every node of the middle site of the route in use down for 8 s (the relay reroutes through the other side), then restarted",
			Fault: func(ctx context.Context, e *Env) error {
				Sleep(ctx, 3*time.Second)
				return siteDown(ctx, e, via(ctx, e), 8*time.Second)
			},
		},
		{
			Name: "relay-link-cut", Sites: 4, Topology: "ring", Rate: 5, Netns: true,
			Description: "4 sites in a ring: cut everything between site 1 and its neighbour on the route in use (QKD link and classical) for 6 s (the relay reroutes), then heal",
			Fault: func(ctx context.Context, e *Env) error {
				Sleep(ctx, 3*time.Second)
				return cutSites(ctx, e, e.Sites[0], via(ctx, e), 6*time.Second)
			},
		},
		{
			Name: "relay-classical-partition", Sites: 3, Topology: "line", Rate: 5, Netns: true,
			Description: "3 sites in a line: cut the classical path between the source and destination sites for 6 s (assignments fail: 503 and burned keys; blocks the destination cannot be told to burn stay pending), then heal",
			Fault: func(ctx context.Context, e *Env) error {
				Sleep(ctx, 3*time.Second)
				return cutSites(ctx, e, e.Sites[0], e.Sites[2], 6*time.Second)
			},
		},
	} {
		Scenarios[sc.Name] = sc
	}
}

// NetworkSites are the KME IDs of a network scenario's n sites, in
// topology order: the source first, the destination third (two hops on
// either side in a ring of 4), the others relay sites.
func NetworkSites(n int) []string {
	out := []string{"sender_app", "relay1_app", "receiver_app"}
	for i := 2; len(out) < n; i++ {
		out = append(out, fmt.Sprintf("relay%d_app", i))
	}
	return out[:n]
}

// via is the middle site of the route the source's leader relays to the
// destination on now (the second site when it cannot tell).
func via(ctx context.Context, e *Env) string {
	src, dst := e.Sites[0], e.Sites[2]
	if st, err := NetworkStatus(ctx, e.C, src); err == nil {
		if rt, ok := st.Routes[dst]; ok && len(rt.Path) == 3 {
			return rt.Path[1]
		}
	}
	return e.Sites[1]
}

// NetworkStatus reads the network status (GET /admin/v1/network) at site's
// leader with the site's operator certificate.
func NetworkStatus(ctx context.Context, c *harness.Cluster, site string) (network.Status, error) {
	var st network.Status
	l, err := c.Leader(ctx, site)
	if err != nil {
		return st, err
	}
	h, err := c.HTTPClient(harness.OperatorName(site))
	if err != nil {
		return st, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+c.Layout.Node(l).Addr()+"/admin/v1/network", nil)
	if err != nil {
		return st, err
	}
	resp, err := h.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("network status at %s: %s", l, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// siteDown SIGKILLs every node of site and restarts them after down.
func siteDown(ctx context.Context, e *Env, site string, down time.Duration) error {
	ids := e.C.Nodes(site)
	each := func(f func(string) error) func() error {
		return func() error {
			for _, id := range ids {
				if err := f(id); err != nil {
					return err
				}
			}
			return nil
		}
	}
	return hold(ctx, e, down, "SIGKILL every node of "+site, each(e.C.Kill), "restarted "+site, each(e.C.StartNode))
}

// cutSites drops all traffic between sites a and b for d, then heals.
func cutSites(ctx context.Context, e *Env, a, b string, d time.Duration) error {
	return hold(ctx, e, d, "cut "+a+" ↔ "+b, func() error { return e.C.CutSites(a, b) }, "heal "+a+" ↔ "+b, e.C.Heal)
}
