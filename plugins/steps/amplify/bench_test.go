package amplify

import (
	"testing"

	"qkdkms/plugins/steps/bits"
)

func BenchmarkToeplitz1e6(b *testing.B) {
	r := bits.NewRNG([]byte("b"), "bench")
	n, l := 1_000_000, 500_000
	x, s := randVec(r, n), randVec(r, n+l-1)
	for i := 0; i < b.N; i++ {
		Toeplitz(x, s, l)
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mbit/s")
}
