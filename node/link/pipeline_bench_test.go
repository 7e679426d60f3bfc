package link

import (
	"fmt"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
)

// BenchmarkPipelinedSessions is the link's key rate with frames run ahead
// (protocol 4) and one frame at a time (protocol 3), over a classical
// channel without latency and with a one-way latency of 1 and 2 ms (200
// and 400 km of fiber at 5 µs per km; shorter delays cannot be modelled
// with time.Sleep, which rounds up to about a millisecond): what running
// sifting and estimation of the next frame beside Cascade's round trips
// buys. one-way-ms is the mean delay a write actually got. Native
// plugins, a 25 km simulated fiber and 200,000-bit blocks as in node's
// BenchmarkLiveKeyRate; the stores are fakes, so a commit costs nothing.
// b.N is the number of sessions measured, after the first.
func BenchmarkPipelinedSessions(b *testing.B) {
	for _, latency := range []time.Duration{0, time.Millisecond, 2 * time.Millisecond} {
		for _, protocol := range []int{3, 4} {
			b.Run(fmt.Sprintf("latency=%v/protocol=%d", latency, protocol), func(b *testing.B) {
				c := connection("sae-1", siteB, 1<<30)
				p := newPair(b, pairOpts{conns: []raftstore.Connection{c}, protocol3: protocol == 3,
					latency: latency, blockBits: 200_000, fiberKm: 25})
				p.start()
				testenv.WaitFor(b, "the first session", func() bool { return p.a.Status().Sessions >= 1 })
				st0, t0 := p.a.Status(), time.Now()
				b.ResetTimer()
				testenv.WaitFor(b, "the measured sessions", func() bool { return p.a.Status().Sessions >= st0.Sessions+int64(b.N) })
				b.StopTimer()
				st1 := p.a.Status()
				p.stop()
				if v := p.helloVersions(1); v[siteA] != protocol {
					b.Fatalf("the link spoke protocol %d, want %d", v[siteA], protocol)
				}
				if st1.Aborted != st0.Aborted {
					b.Logf("%d sessions aborted during the measurement", st1.Aborted-st0.Aborted)
				}
				b.ReportMetric(float64(st1.CommittedBits-st0.CommittedBits)/time.Since(t0).Seconds(), "bits/s")
				b.ReportMetric(float64(p.delays.mean())/1e6, "one-way-ms")
			})
		}
	}
}
