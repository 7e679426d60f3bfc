package node

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/plugins/host"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/testenv"
	"qkdkms/quantum/sim"
	"qkdkms/quantum/simrun"
)

// BenchmarkLiveKeyRate: secret key bits committed to both sites per second
// of wall time over the live link at 25 km on loopback (two sites of three
// nodes, fsync on), beside the standalone engine's final key bits per wall
// second for the same block size and plugins. b.N is the number of sessions
// (use -benchtime Nx). The standalone engine runs before and after the live
// link (which is stopped first) and its rate is that of both runs together,
// so a machine that slows down or speeds up during the benchmark moves both
// figures alike.
func BenchmarkLiveKeyRate(b *testing.B) {
	const blockBits = 200_000
	for _, mode := range []string{"native", "wasm"} {
		b.Run("plugins="+mode, func(b *testing.B) {
			dir := ""
			if mode == "wasm" {
				var err error
				if dir, err = pluginbuild.Dir(); err != nil {
					b.Fatal(err)
				}
			}
			n := max(b.N, 2)
			bits1, wall1 := standalone(b, mode, dir, blockBits, n/2, 1)
			live := liveRate(b, mode, dir, blockBits, n)
			bits2, wall2 := standalone(b, mode, dir, blockBits, n-n/2, 2)
			standalone := (bits1 + bits2) / (wall1 + wall2).Seconds()
			b.ReportMetric(live, "live-bits/s")
			b.ReportMetric(standalone, "standalone-bits/s")
			b.ReportMetric(live/standalone, "live/standalone")
		})
	}
}

// standalone returns the final key bits of sessions standalone sessions
// (simulation seed seed) and the wall time they took.
func standalone(b *testing.B, mode, dir string, block, sessions int, seed uint64) (float64, time.Duration) {
	b.Helper()
	ctx := context.Background()
	var runner host.Runner
	var err error
	if mode == "native" {
		runner, err = host.Native(host.Selection{})
	} else {
		var h *host.Host
		h, err = host.Open(ctx, dir, host.Options{CacheDir: filepath.Join(b.TempDir(), "cache")})
		if err == nil {
			defer h.Close(ctx)
			runner, err = h.Runner(host.Selection{})
		}
	}
	if err != nil {
		b.Fatal(err)
	}
	m := sim.DefaultModel()
	rows, err := simrun.Run(ctx, simrun.Options{Distances: []float64{25}, Blocks: []int{block}, Sessions: sessions,
		Model: m, Seed: seed, TagBits: 64, EpsSec: 1e-9, Timeout: 5 * time.Minute, Runner: runner})
	if err != nil {
		b.Fatal(err)
	}
	return float64(rows[0].Final), rows[0].Wall
}

func liveRate(b *testing.B, mode, dir string, block, sessions int) float64 {
	b.Helper()
	p := newTestPKI(b)
	sa, sb := allocSite(b, p, "sender_app", 3), allocSite(b, p, "receiver_app", 3)
	psk := filepath.Join(b.TempDir(), "link.psk")
	secret := make([]byte, 64<<10)
	_, _ = rand.Read(secret)
	if err := os.WriteFile(psk, secret, 0o600); err != nil {
		b.Fatal(err)
	}
	lc := LinkConfig{PSKFile: psk, Native: mode == "native", PluginDir: dir, FiberKm: 25, BlockBits: block}
	sa.link, sb.link = lc, lc
	sa.boot(map[string][]string{"receiver_app": sb.allAddrs()})
	sb.boot(map[string][]string{"sender_app": sa.allAddrs()})
	ctx := context.Background()
	if err := sa.leader().services.kme.RegisterConnection(ctx, etsi.ConnectionInfo{SourceKME: "sender_app", TargetKME: "receiver_app",
		MasterSAE: "ghi", SlaveSAE: "jkl", KeySize: 256, MaxKeyCount: 1 << 30, MaxKeyPerRequest: 10, MinKeySize: 64, MaxKeySize: 1024}); err != nil {
		b.Fatal(err)
	}
	alice := sb.leader().links.byPeer["sender_app"]
	// Measure from the end of the first session to the end of the last.
	testenv.WaitFor(b, "the first session", func() bool { return alice.Status().Sessions >= 1 })
	st0, t0 := alice.Status(), time.Now()
	b.ResetTimer()
	testenv.WaitFor(b, "the measured sessions", func() bool { return alice.Status().Sessions >= st0.Sessions+int64(sessions) })
	b.StopTimer()
	st1 := alice.Status()
	if st1.Aborted != st0.Aborted {
		b.Logf("%d sessions aborted during the measurement", st1.Aborted-st0.Aborted)
	}
	// Committed key bits plus the pad material sessions set aside: both are
	// secret key both sites stored.
	bits := float64(st1.CommittedBits-st0.CommittedBits) + 8*float64(st1.AuthPadsLeft-st0.AuthPadsLeft+int64(st1.AuthPadsUsed-st0.AuthPadsUsed))
	rate := bits / time.Since(t0).Seconds()
	sa.c.Shutdown()
	sb.c.Shutdown()
	return rate
}
