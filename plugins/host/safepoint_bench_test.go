package host_test

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/plugins/instrument/wasmtest"
	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/reconcile/cascade"
	"qkdkms/plugins/steps/wire"
)

// BenchmarkSafepointGap: how long the Go runtime waits for a goroutine
// running a plugin to reach a safepoint. While plugin calls run (Cascade at
// n = 10^5, amplify at n = 10^6, and a plugin looping until its deadline),
// another goroutine forces garbage collections back to back; the longest
// "stopping the world" pause (runtime/metrics /sched/pauses/stopping/gc)
// and the longest gap between ticks of a 1 ms ticker are reported.
func BenchmarkSafepointGap(b *testing.B) {
	ctx := context.Background()
	hang := openHost(b, host.Options{CallTimeout: 500 * time.Millisecond})
	addModule(b, hang, "hang", wasmtest.ABIModule("qkd_step"))
	r, err := openHost(b, host.Options{}).Runner(nil)
	if err != nil {
		b.Fatal(err)
	}
	rng := bits.NewRNG([]byte("gap"), "bench")
	ka := randVec(rng, 100_000)
	kb := exactErrors(rng, ka, 0.02)
	big := randVec(rng, 1_000_000)
	work := []struct {
		name string
		run  func() error
	}{
		{"cascade", func() error {
			ia, err := r.New(ctx, steps.Reconcile, steps.Alice, cascade.Params(0.02), []byte("s"))
			if err != nil {
				return err
			}
			defer ia.Close(ctx)
			ib, err := r.New(ctx, steps.Reconcile, steps.Bob, cascade.Params(0.02), []byte("s"))
			if err != nil {
				return err
			}
			defer ib.Close(ctx)
			_, _, _, _, err = host.RunPair(ctx, ia, ib, vecIn(ka), vecIn(kb))
			return err
		}},
		{"amplify", func() error {
			w := wire.Writer{}
			w.U32(500_000)
			ia, err := r.New(ctx, steps.Amplify, steps.Alice, w.B, []byte("s"))
			if err != nil {
				return err
			}
			defer ia.Close(ctx)
			_, err = ia.Step(ctx, steps.Input{Data: vecIn(big)})
			return err
		}},
		{"runaway", func() error {
			if err := runOnce(ctx, hang, "hang"); err == nil {
				return fmt.Errorf("the looping plugin returned")
			}
			return nil
		}},
	}
	for _, wk := range work {
		b.Run(wk.name, func(b *testing.B) {
			before := stopPauses()
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var maxTick time.Duration
			wg.Add(2)
			go func() { // collections back to back
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
						runtime.GC()
					}
				}
			}()
			go func() { // a 1 ms ticker's longest gap
				defer wg.Done()
				t := time.NewTicker(time.Millisecond)
				defer t.Stop()
				last := time.Now()
				for {
					select {
					case <-stop:
						return
					case now := <-t.C:
						maxTick = max(maxTick, now.Sub(last))
						last = now
					}
				}
			}()
			for i := 0; i < b.N; i++ {
				if err := wk.run(); err != nil {
					b.Fatal(err)
				}
			}
			close(stop)
			wg.Wait()
			b.ReportMetric(maxPause(before, stopPauses()).Seconds()*1e3, "max-stw-wait-ms")
			b.ReportMetric(maxTick.Seconds()*1e3, "max-tick-gap-ms")
		})
	}
}

func stopPauses() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/pauses/stopping/gc:seconds"}}
	metrics.Read(s)
	return s[0].Value.Float64Histogram()
}

// maxPause returns the upper bound of the highest bucket that gained counts
// between two readings of a histogram.
func maxPause(a, b *metrics.Float64Histogram) time.Duration {
	for i := len(b.Counts) - 1; i >= 0; i-- {
		if b.Counts[i] > a.Counts[i] {
			hi := b.Buckets[i+1]
			if math.IsInf(hi, 1) {
				hi = b.Buckets[i]
			}
			return time.Duration(hi * float64(time.Second))
		}
	}
	return 0
}
