package node

import (
	"testing"
	"time"

	"qkdkms/plugins/testenv"
)

// BenchmarkRelay measures the trusted-node relay (docs/ARCHITECTURE.md
// "Trusted-node relay") on simulated 25 km links:
//
//   - line: 3 sites × 3 nodes in a line; ghi at the first site, jkl at the
//     last. relay-bits/s is the key delivered end to end (done at the
//     source), link-bits/s the final key the slower of the two links made
//     in the same window (pool, relay and pad material), relay/link their
//     ratio; p50-s and p99-s the time of one relayed block, start to done.
//   - ring-reroute: 4 sites × 1 node in a ring; every node of the middle
//     site of the route in use is killed; reroute-s is the time until the
//     next block is done through the other side.
//
// b.N is the number of relayed blocks measured (at least 8).
func BenchmarkRelay(b *testing.B) {
	b.Run("line", func(b *testing.B) {
		sites := []string{"sender_app", "relay1_app", "receiver_app"}
		n := newQKDNetwork(b, 3, 25, sites, [][2]string{{sites[0], sites[1]}, {sites[1], sites[2]}})
		n.connect("sender_app", "receiver_app", 1<<30)
		// Past the first blocks, which drain the relay pools made before
		// the connection existed.
		testenv.WaitFor(b, "the relay pools drained", func() bool {
			st := n.sites["sender_app"].leader().links.statuses()
			return n.pool("sender_app").Relay.Done >= 4 && len(st) == 1 && st[0].Sessions >= 4
		})
		made := func() [2]float64 {
			var out [2]float64
			for i, l := range [][2]string{{sites[0], sites[1]}, {sites[1], sites[2]}} {
				s := n.sites[l[0]].leader()
				for _, st := range s.links.statuses() {
					if st.Peer != l[1] {
						continue
					}
					rs := s.Store().RelayStreams(l[1])
					out[i] = float64(st.CommittedBits) + 8*float64(rs[0].Stream+rs[1].Stream) +
						8*float64(st.AuthPadsLeft+int64(st.AuthPadsUsed))
				}
			}
			return out
		}
		p0, m0, t0 := n.pool("sender_app").Relay, made(), time.Now()
		b.ResetTimer()
		testenv.WaitFor(b, "the measured blocks", func() bool { return n.pool("sender_app").Relay.Done >= p0.Done+int64(max(b.N, 8)) })
		b.StopTimer()
		p1, m1, wall := n.pool("sender_app").Relay, made(), time.Since(t0).Seconds()
		relay := float64(p1.DoneBits-p0.DoneBits) / wall
		link := min(m1[0]-m0[0], m1[1]-m0[1]) / wall
		st := n.status("sender_app")
		b.ReportMetric(relay, "relay-bits/s")
		b.ReportMetric(link, "link-bits/s")
		b.ReportMetric(relay/link, "relay/link")
		b.ReportMetric(st.Stats.P50Seconds, "p50-s")
		b.ReportMetric(st.Stats.P99Seconds, "p99-s")
		if p1.Burned != p0.Burned {
			b.Logf("%d blocks burned during the measurement", p1.Burned-p0.Burned)
		}
	})
	b.Run("ring-reroute", func(b *testing.B) {
		sites := []string{"sender_app", "relay1_app", "receiver_app", "relay2_app"}
		n := newQKDNetwork(b, 1, 25, sites, [][2]string{{sites[0], sites[1]}, {sites[1], sites[2]}, {sites[2], sites[3]}, {sites[3], sites[0]}})
		n.connect("sender_app", "receiver_app", 1<<30)
		var via string
		testenv.WaitFor(b, "blocks relayed", func() bool {
			if rt := n.status("sender_app").Routes["receiver_app"]; len(rt.Path) == 3 {
				via = rt.Path[1]
			}
			return n.pool("sender_app").Relay.Done >= int64(max(b.N, 8)) && via != ""
		})
		b.ResetTimer()
		n.sites[via].c.Shutdown()
		killed, before := time.Now(), n.pool("sender_app").Relay.Done
		testenv.WaitFor(b, "a block around "+via, func() bool { return n.pool("sender_app").Relay.Done > before })
		b.StopTimer()
		b.ReportMetric(time.Since(killed).Seconds(), "reroute-s")
	})
}
