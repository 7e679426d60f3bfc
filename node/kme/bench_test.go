package kme

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/etsi/client"
)

// BenchmarkETSIRoundTrip: 32 concurrent master SAEs call enc_keys (1 key,
// 256 bits) at site A and their slaves call dec_keys with the key ID at
// site B; 3 nodes per site, Raft logs in bolt with fsync on, every call over
// HTTPS with mTLS and keep-alive. SAEs spread over all nodes of their site
// (followers forward to the leader) unless the sub-benchmark says leader.
// One op is one matched pair (enc at A + dec at B, bytes compared).
func BenchmarkETSIRoundTrip(b *testing.B) {
	for _, mode := range []struct {
		name       string
		leaderOnly bool
	}{{"spread", false}, {"leader", true}} {
		b.Run(mode.name, func(b *testing.B) { benchRoundTrip(b, 32, mode.leaderOnly) })
	}
}

func benchRoundTrip(b *testing.B, pairs int, leaderOnly bool) {
	w := newWorld(b, worldOpts{nodes: 3, quiet: true, raftDefaults: true, timing: os.Getenv("KME_BENCH_TIMING") != "", noSync: os.Getenv("KME_BENCH_NOSYNC") != ""}, siteA, siteB)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	masters := make([]*sae, pairs)
	slaves := make([]*sae, pairs)
	perPair := b.N/pairs + 2
	for i := range pairs {
		masters[i] = w.sae(fmt.Sprintf("m%d", i))
		slaves[i] = w.sae(fmt.Sprintf("s%d", i))
		w.register(ctx, siteA, w.connection(siteA, siteB, masters[i].id, slaves[i].id))
		for left := perPair; left > 0; left -= 2048 {
			w.importBits(ctx, siteA, masters[i].id, slaves[i].id, 32*min(left, 2048))
		}
	}
	a, bs := w.sites[siteA], w.sites[siteB]
	la, lb := a.waitLeader(b), bs.waitLeader(b)
	lat := make([][]time.Duration, pairs)
	var failed atomic.Int64
	var firstErr atomic.Value
	defer func() {
		for _, s := range w.sites {
			for _, n := range s.nodes {
				if n.tsite != nil {
					n.tsite.report(b, n.name)
				}
			}
		}
	}()
	cpu0 := cpuTime()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			na, nb := a.nodes[i%3], bs.nodes[(i+1)%3]
			if leaderOnly {
				na, nb = la, lb
			}
			quota := b.N / pairs
			if i < b.N%pairs {
				quota++
			}
			for range quota {
				t0 := time.Now()
				enc, err := masters[i].on(na).EncKeys(ctx, slaves[i].id, etsi.KeyRequest{Number: 1, Size: 256})
				if err == nil {
					var dec []client.Key
					dec, err = slaves[i].on(nb).DecKeys(ctx, masters[i].id, enc[0].ID)
					if err == nil && !bytes.Equal(dec[0].Bytes, enc[0].Bytes) {
						err = fmt.Errorf("key %s differs", enc[0].ID)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := (cpuTime() - cpu0).Seconds()
	b.ReportMetric(cpu/elapsed.Seconds(), "cpu-cores")
	b.ReportMetric(cpu*1000/float64(b.N), "cpu-ms/pair")
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d pairs failed, first: %v", n, b.N, firstErr.Load())
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "pairs/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
