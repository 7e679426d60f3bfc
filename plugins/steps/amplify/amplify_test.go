package amplify

import (
	mbits "math/bits"
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

// fastNaive is Naive word by word: y_i = parity(s[i … i+n−1] ∧ reverse(x)).
func fastNaive(x, s bits.Vec, l int) bits.Vec {
	n := x.N
	xr := bits.New(n)
	for j := 0; j < n; j++ {
		xr.Set(n-1-j, x.Get(j))
	}
	// s padded with a zero word, so that every shifted word can be read
	sw := append(append([]uint64(nil), s.W...), 0, 0)
	out := bits.New(l)
	for i := 0; i < l; i++ {
		q, r := i>>6, uint(i&63)
		var acc uint64
		for k, w := range xr.W {
			v := sw[q+k] >> r
			if r != 0 {
				v |= sw[q+k+1] << (64 - r)
			}
			acc ^= v & w
		}
		out.Set(i, uint8(mbits.OnesCount64(acc)&1))
	}
	return out
}

func TestFastNaive(t *testing.T) {
	r := bits.NewRNG([]byte("fn"), "test")
	for _, tc := range []struct{ n, l int }{{1, 1}, {63, 2}, {64, 64}, {65, 30}, {500, 499}} {
		x, s := randVec(r, tc.n), randVec(r, tc.n+tc.l-1)
		if !fastNaive(x, s, tc.l).Equal(Naive(x, s, tc.l)) {
			t.Fatalf("n=%d ℓ=%d: fastNaive differs from Naive", tc.n, tc.l)
		}
	}
}

// TestToeplitzRandomSizes: random n ≤ 10^4 and ℓ ≤ n against the direct
// product, every 8th against Naive itself.
func TestToeplitzRandomSizes(t *testing.T) {
	r := bits.NewRNG([]byte("sizes"), "test")
	for c := 0; c < 120; c++ {
		n := 1 + int(r.Uint64()%10000)
		if c < 40 {
			n = 1 + int(r.Uint64()%200)
		}
		l := 1 + int(r.Uint64()%uint64(n))
		x, s := randVec(r, n), randVec(r, n+l-1)
		want := fastNaive(x, s, l)
		if c%8 == 0 {
			want = Naive(x, s, l)
		}
		if got := Toeplitz(x, s, l); !got.Equal(want) {
			t.Fatalf("n=%d ℓ=%d: differs from the direct product in %d bits", n, l, got.Diff(want))
		}
	}
}

// TestToeplitzBlocks: the block decomposition (forced with small transforms)
// against the direct product, and against the one-transform result.
func TestToeplitzBlocks(t *testing.T) {
	r := bits.NewRNG([]byte("blocks"), "test")
	for c := 0; c < 150; c++ {
		maxk := 1 + c%16
		n := 1 + int(r.Uint64()%3000)
		l := 1 + int(r.Uint64()%uint64(n))
		x, s := randVec(r, n), randVec(r, n+l-1)
		got := bits.New(l)
		copy(got.W, toeplitzGF(x.Bytes(), s.Bytes(), n, l, maxk))
		if want := fastNaive(x, s, l); !got.Equal(want) {
			t.Fatalf("maxk=%d n=%d ℓ=%d: differs from the direct product in %d bits", maxk, n, l, got.Diff(want))
		}
	}
	// a long key: 2^16-point blocks against 2^12-point ones, and the
	// direct product on a sample of output bits
	n, l := 700_000, 350_001
	x, s := randVec(r, n), randVec(r, n+l-1)
	a := Toeplitz(x, s, l)
	b := bits.New(l)
	copy(b.W, toeplitzGF(x.Bytes(), s.Bytes(), n, l, 12))
	if !a.Equal(b) {
		t.Fatalf("n=%d: blocks of 2^16 and 2^12 points differ in %d bits", n, a.Diff(b))
	}
	for _, i := range []int{0, 1, 63, 64, 12345, l / 2, l - 2, l - 1} {
		var p uint8
		for j := 0; j < n; j++ {
			p ^= s.Get(i-j+n-1) & x.Get(j)
		}
		if a.Get(i) != p {
			t.Fatalf("n=%d: bit %d differs from the direct product", n, i)
		}
	}
}

// TestCantorBasis checks the basis and the field tables gf.go relies on.
func TestCantorBasis(t *testing.T) {
	g := tables()
	if cantor[0] != 1 {
		t.Fatal("β_0 ≠ 1")
	}
	for i := 1; i < 16; i++ {
		b := cantor[i]
		if g.mul(b, b)^b != cantor[i-1] {
			t.Fatalf("β_%d² + β_%d ≠ β_%d", i, i, i-1)
		}
	}
	// the basis spans GF(2^16): its 2^16 combinations are distinct
	seen := make([]bool, 1<<16)
	for u := 0; u < 1<<16; u++ {
		var w uint16
		for j := 0; j < 16; j++ {
			if u>>j&1 == 1 {
				w ^= cantor[j]
			}
		}
		if seen[w] {
			t.Fatal("Cantor basis is linearly dependent")
		}
		seen[w] = true
	}
	// z has order 65535 (the polynomial is primitive), log and exp agree
	for a := 1; a < 1<<16; a++ {
		if g.exp[g.log[a]] != uint16(a) {
			t.Fatalf("exp(log(%d)) ≠ %d", a, a)
		}
	}
}
