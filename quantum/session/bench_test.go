package session_test

import (
	"testing"
	"time"

	"qkdkms/quantum/sim"
)

// BenchmarkSession: whole sessions at 25 km (2·10^7 pulses each, sim link,
// both parties in process over quantum.Pipe), WASM and native plugins
// alternately. Reports final key bits per second of wall time for each and
// their ratio.
func BenchmarkSession(b *testing.B) {
	h := wasmHost(b)
	wr, err := h.Runner(nil)
	if err != nil {
		b.Fatal(err)
	}
	nr := native(b, nil)
	m := sim.DefaultModel()
	m.FiberKm = 25
	var wBits, nBits float64
	var wTime, nTime time.Duration
	for i := 0; i < b.N; i++ {
		seed := uint64(100 + i)
		t0 := time.Now()
		o := run(b, m, seed, 20_000_000, wr, wr)
		wTime += time.Since(t0)
		if o.errA != nil || o.errB != nil {
			b.Fatal(o.errA, o.errB)
		}
		wBits += float64(o.a.FinalBits)
		t0 = time.Now()
		o = run(b, m, seed, 20_000_000, nr, nr)
		nTime += time.Since(t0)
		if o.errA != nil || o.errB != nil {
			b.Fatal(o.errA, o.errB)
		}
		nBits += float64(o.a.FinalBits)
	}
	wr2, nr2 := wBits/wTime.Seconds(), nBits/nTime.Seconds()
	b.ReportMetric(wr2, "wasm-bits/s")
	b.ReportMetric(nr2, "native-bits/s")
	b.ReportMetric(wr2/nr2, "wasm/native")
	b.ReportMetric(wBits/float64(b.N), "final-bits")
}
