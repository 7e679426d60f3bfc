package amplify

import (
	"bytes"
	"testing"

	"qkdkms/plugins/steps/bits"
)

// divideRef divides the block a (2h elements, h = 2^i) by s_i = x^h +
// Σ_{j ⊊ i} x^(2^j) in place, by long division (quotient on top).
func divideRef(a []uint16, i int) {
	h := 1 << i
	for t := 2*h - 1; t >= h; t-- {
		for j := 0; j < i; j++ {
			if j&^i == 0 {
				a[t-h+1<<j] ^= a[t]
			}
		}
	}
}

// toNovelRef is the conversion by definition: divide by s_{k−1}, then the
// halves by s_{k−2}, and so on.
func toNovelRef(a []uint16, k int) {
	for i := k - 1; i >= 0; i-- {
		for s := 0; s < len(a); s += 2 << i {
			divideRef(a[s:s+2<<i], i)
		}
	}
}

func TestNovelBasis(t *testing.T) {
	r := bits.NewRNG([]byte("novel"), "test")
	for k := 0; k <= 16; k++ {
		n := 1 << k
		ref := make([]uint16, n)
		a := make([]byte, 2*n)
		for i := range ref {
			ref[i] = uint16(r.Uint64())
			le.PutUint16(a[2*i:], ref[i])
		}
		orig := bytes.Clone(a)
		toNovelRef(ref, k)
		toNovel(a, k, 1)
		for i := range ref {
			if le.Uint16(a[2*i:]) != ref[i] {
				t.Fatalf("k=%d: coefficient %d differs from the division by s_i", k, i)
			}
		}
		fromNovel(a, k, 1)
		if !bytes.Equal(a, orig) {
			t.Fatalf("k=%d: fromNovel does not undo toNovel", k)
		}
	}
}

// TestTransform: forward evaluates f at ω(u), inverse undoes it.
func TestTransform(t *testing.T) {
	g := tables()
	r := bits.NewRNG([]byte("fft"), "test")
	for _, k := range []int{1, 2, 3, 4, 5, 8, 11} {
		n := 1 << k
		f := make([]uint16, n)
		a := make([]byte, 2*n)
		for i := range f {
			f[i] = uint16(r.Uint64())
			le.PutUint16(a[2*i:], f[i])
		}
		orig := bytes.Clone(a)
		toNovel(a, k, 1)
		g.forward(a, 0)
		for u := 0; u < n; u++ {
			var w uint16 // ω(u)
			for j := 0; j < k; j++ {
				if u>>j&1 == 1 {
					w ^= cantor[j]
				}
			}
			var v, p uint16 = 0, 1 // Horner would do; powers are clearer
			for i := 0; i < n; i++ {
				v ^= g.mul(f[i], p)
				p = g.mul(p, w)
			}
			if got := le.Uint16(a[2*u:]); got != v {
				t.Fatalf("k=%d: value at ω(%d) is %#x, want %#x", k, u, got, v)
			}
		}
		g.inverse(a, 0)
		fromNovel(a, k, 1)
		if !bytes.Equal(a, orig) {
			t.Fatalf("k=%d: inverse does not undo forward", k)
		}
	}
}

func BenchmarkTransform(b *testing.B) {
	g := tables()
	a := make([]byte, 2<<16)
	for i := range a {
		a[i] = byte(i * 7919 >> 3)
	}
	for i := 0; i < b.N; i++ {
		toNovel(a, 16, 1)
		g.forward(a, 0)
	}
}
