package host_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"qkdkms/plugins/host"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/estimate"
	"qkdkms/plugins/steps/reconcile/cascade"
	"qkdkms/plugins/steps/wire"
)

func h2(x float64) float64 { return -x*math.Log2(x) - (1-x)*math.Log2(1-x) }

// runners: the shipped WASM plugins ("wasm": the C builds), the Go guests
// built to WASM ("wasm-go", the reference as WASM) and the native Go steps
// ("native").
func runners(b *testing.B, sel host.Selection) []struct {
	name string
	r    host.Runner
} {
	w, err := openHost(b, host.Options{}).Runner(sel)
	if err != nil {
		b.Fatal(err)
	}
	goDir, err := pluginbuild.GoDir()
	if err != nil {
		b.Fatal(err)
	}
	gh, err := host.Open(context.Background(), goDir, host.Options{CacheDir: filepath.Join(os.TempDir(), "qkdkms-wazero-cache")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { gh.Close(context.Background()) })
	g, err := gh.Runner(sel)
	if err != nil {
		b.Fatal(err)
	}
	n, err := host.Native(sel)
	if err != nil {
		b.Fatal(err)
	}
	return []struct {
		name string
		r    host.Runner
	}{{"wasm", w}, {"wasm-go", g}, {"native", n}}
}

// exactErrors returns a copy of a with exactly round(q·n) flipped bits.
func exactErrors(r *bits.RNG, a bits.Vec, q float64) bits.Vec {
	b := a.Clone()
	for _, i := range r.Perm(a.N)[:int(math.Round(q*float64(a.N)))] {
		b.Flip(int(i))
	}
	return b
}

// BenchmarkReconcile: Cascade (option 8) at n = 10^5. Mbit/s counts n over
// the wall time of both parties run one after the other in one goroutine.
// f = leaked / (n·h(QBER)); frame-error-rate = frames with bits left
// different / frames (before verification).
func BenchmarkReconcile(b *testing.B) {
	for _, plugin := range []string{"cascade", "cascade-yanetal"} {
		for _, rr := range runners(b, host.Selection{steps.Reconcile: plugin}) {
			for _, q := range []float64{0.01, 0.02, 0.05} {
				b.Run(fmt.Sprintf("%s/%s/qber=%g", plugin, rr.name, q), func(b *testing.B) {
					ctx := context.Background()
					n := 100000
					rng := bits.NewRNG([]byte(fmt.Sprint(q)), "bench")
					var leaked, rounds float64
					fails := 0
					for i := 0; i < b.N; i++ {
						b.StopTimer()
						a := randVec(rng, n)
						e := exactErrors(rng, a, q)
						seed := []byte(fmt.Sprint(i))
						b.StartTimer()
						ia, err := rr.r.New(ctx, steps.Reconcile, steps.Alice, cascade.Params(q), seed)
						if err != nil {
							b.Fatal(err)
						}
						ib, err := rr.r.New(ctx, steps.Reconcile, steps.Bob, cascade.Params(q), seed)
						if err != nil {
							b.Fatal(err)
						}
						ra, rb, _, _, err := host.RunPair(ctx, ia, ib, vecIn(a), vecIn(e))
						if err != nil {
							b.Fatal(err)
						}
						ia.Close(ctx)
						ib.Close(ctx)
						b.StopTimer()
						leaked += float64(ra.Leaked)
						rounds += float64(ra.Rounds)
						ka, kb := decode(b, ra.Output), decode(b, rb.Output)
						if !ka.Equal(kb) {
							fails++
						}
						b.StartTimer()
					}
					b.ReportMetric(leaked/float64(b.N)/(float64(n)*h2(q)), "f")
					b.ReportMetric(float64(fails)/float64(b.N), "frame-error-rate")
					b.ReportMetric(rounds/float64(b.N), "rounds")
					b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mbit/s")
				})
			}
		}
	}
}

func decode(b *testing.B, o []byte) bits.Vec {
	r := wire.Reader{B: o}
	v := r.Vec()
	if err := r.Done(); err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkAmplify: Toeplitz hashing of n input bits to ℓ = n/2 output bits,
// one party (Alice), including instance creation. Mbit/s counts input bits.
func BenchmarkAmplify(b *testing.B) {
	for _, rr := range runners(b, nil) {
		for _, n := range []int{1_000_000, 10_000_000} {
			b.Run(fmt.Sprintf("%s/n=%d", rr.name, n), func(b *testing.B) {
				ctx := context.Background()
				rng := bits.NewRNG([]byte("amp"), "bench")
				x := randVec(rng, n)
				l := n / 2
				seed := make([]byte, (n+l+6)/8)
				w := wire.Writer{}
				w.U32(uint32(l))
				in := vecIn(x)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					ia, err := rr.r.New(ctx, steps.Amplify, steps.Alice, w.B, seed)
					if err != nil {
						b.Fatal(err)
					}
					r, err := ia.Step(ctx, steps.Input{Data: in})
					if err != nil || !r.Done {
						b.Fatal(err)
					}
					ia.Close(ctx)
				}
				b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mbit/s")
			})
		}
	}
}

// BenchmarkSiftEstimateVerify: sift, estimate and verify of one session
// with a block of n = 2·10^5 key bits (8·10^5 detections, K = 3, QBER 2 %;
// verify with t = 64 and a full-length seed, as quantum/session runs them),
// both parties run one after the other in one goroutine, instance creation
// included; ms/op is the pair's wall time.
func BenchmarkSiftEstimateVerify(b *testing.B) {
	rng := bits.NewRNG([]byte("sev"), "bench")
	da, db := csDetections(rng, 800_000, 3, 0.02)
	inA, inB := da.Encode(steps.Alice), db.Encode(steps.Bob)
	nr, err := host.Native(nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	pair := func(b testing.TB, r host.Runner, kind steps.Kind, params, seed, a, bb []byte) (steps.Result, steps.Result) {
		ia, err := r.New(ctx, kind, steps.Alice, params, seed)
		if err != nil {
			b.Fatal(err)
		}
		ib, err := r.New(ctx, kind, steps.Bob, params, []byte("bob"))
		if err != nil {
			b.Fatal(err)
		}
		ra, rb, _, _, err := host.RunPair(ctx, ia, ib, a, bb)
		if err != nil {
			b.Fatal(err)
		}
		ia.Close(ctx)
		ib.Close(ctx)
		return ra, rb
	}
	sa, sb := pair(b, nr, steps.Sift, []byte{3}, nil, inA, inB)
	ea, _ := pair(b, nr, steps.Estimate, nil, nil, sa.Output, sb.Output)
	est, err := estimate.DecodeOutput(ea.Output)
	if err != nil {
		b.Fatal(err)
	}
	key := vecIn(est.Key)
	vseed := make([]byte, (est.Key.N+64+6)/8)
	for i := range vseed {
		vseed[i] = byte(rng.Uint64())
	}
	type stage struct {
		kind         steps.Kind
		params, seed []byte
		inA, inB     []byte
	}
	stages := []stage{
		{steps.Sift, []byte{3}, nil, inA, inB},
		{steps.Estimate, nil, nil, sa.Output, sb.Output},
		{steps.Verify, []byte{64}, vseed, key, key},
	}
	for _, rr := range runners(b, nil) {
		for _, st := range stages {
			b.Run(fmt.Sprintf("%s/%s/n_Z=%d", st.kind, rr.name, est.Key.N), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					pair(b, rr.r, st.kind, st.params, st.seed, st.inA, st.inB)
				}
				b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N), "ms/op")
			})
		}
	}
}
