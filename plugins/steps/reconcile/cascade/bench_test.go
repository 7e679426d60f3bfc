package cascade

import (
	"fmt"
	"testing"
)

func BenchmarkCascadeNative(b *testing.B) {
	for _, q := range []float64{0.01, 0.02, 0.05} {
		b.Run(fmt.Sprint(q), func(b *testing.B) {
			n := 100000
			x, y := pair("bench", n, q)
			var leaked, rounds float64
			for i := 0; i < b.N; i++ {
				_, _, ma, _ := runPair(b, New, x, y, q)
				leaked += float64(ma.Leaked)
				rounds += float64(ma.Rounds)
			}
			b.ReportMetric(leaked/float64(b.N)/(float64(n)*h2(q)), "f")
			b.ReportMetric(rounds/float64(b.N), "rounds")
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mbit/s")
		})
	}
}
