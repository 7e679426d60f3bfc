package amplify

import (
	"testing"

	"qkdkms/plugins/steps/bits"
)

func randVec(r *bits.RNG, n int) bits.Vec {
	v := bits.New(n)
	for i := range v.W {
		v.W[i] = r.Uint64()
	}
	if n%64 != 0 {
		v.W[len(v.W)-1] &= (1 << uint(n%64)) - 1
	}
	return v
}

func TestToeplitzMatchesNaive(t *testing.T) {
	r := bits.NewRNG([]byte("t"), "test")
	for _, tc := range []struct{ n, l int }{{1, 1}, {2, 1}, {64, 17}, {100, 100}, {1000, 377}, {4099, 2048}} {
		x := randVec(r, tc.n)
		s := randVec(r, tc.n+tc.l-1)
		got, want := Toeplitz(x, s, tc.l), Naive(x, s, tc.l)
		if !got.Equal(want) {
			t.Errorf("n=%d ℓ=%d: NTT Toeplitz differs from the direct product in %d bits", tc.n, tc.l, got.Diff(want))
		}
	}
}

func TestToeplitzAllOnes(t *testing.T) {
	// All-ones x and s: every output bit is the parity of n.
	for _, n := range []int{5, 6, 1 << 12} {
		x, s := bits.New(n), bits.New(2*n-1)
		for i := 0; i < n; i++ {
			x.Set(i, 1)
		}
		for i := 0; i < 2*n-1; i++ {
			s.Set(i, 1)
		}
		y := Toeplitz(x, s, n)
		for i := 0; i < n; i++ {
			if y.Get(i) != uint8(n&1) {
				t.Fatalf("n=%d bit %d = %d", n, i, y.Get(i))
			}
		}
	}
}
