package amplify

// Toeplitz hashing over GF(2^16) with an additive FFT.
//
// The hash is the GF(2)[z] product S(z)·X(z) of the seed and the key
// (amplify.go). Cut both into bytes: a byte is a polynomial of degree < 8,
// and the product of two bytes has degree ≤ 14, so it is exact as an element
// of GF(2^16) = GF(2)[z]/(p(z)) with deg p = 16 — no reduction ever happens,
// and neither in a sum of such products (characteristic 2: sums are XORs). So
// S·X = Σ_t C_t(z)·z^{8t} with C_t = Σ_{u+j=t} A_u·B_j, where A_u, B_j are
// the bytes of S and X read as field elements: a polynomial product over
// GF(2^16) of 8 times fewer coefficients, each C_t a 15-bit value whose bits
// overlap the next one's.
//
// That product is computed by evaluating at the points of a subspace of
// GF(2^16) (an additive FFT, no roots of unity needed), multiplying
// pointwise and interpolating (Lin, Chung and Han's "novel polynomial
// basis" transform, with Cantor's basis of GF(2^16), for which the subspace
// polynomials s_i have 0/1 coefficients and the twiddle of a block does not
// depend on its level):
//
//   - basis β_0 = 1, β_i² + β_i = β_{i−1} (cantor below); ω(u) = Σ_{bit j of
//     u} β_j is the u-th point; V_i = {ω(u) : u < 2^i}.
//   - s_i(x) = Π_{a∈V_i} (x − a) = Σ_{j ⊆ i} x^{2^j} (j a sub-mask of i),
//     s_i(ω(u)) = ω(u >> i).
//   - novel basis X_m = Π_{bit i of m} s_i; a polynomial of degree < 2^k is
//     converted to it by dividing by s_{k−1}, then the quotient and the
//     remainder recursively by s_{k−2}, … (by definition; toNovel computes
//     the same faster).
//   - on the coset V_{i+1} + ω(base), f = f0 + s_i·f1 equals f0 + c·f1 on
//     V_i + ω(base) and f0 + (c+1)·f1 on the other half, c = ω(base >> i):
//     the butterfly (u, v) → (u + c·v, u + (c+1)·v).
//
// A transform of size 2^k computes the product modulo s_k; for k = 16 that
// is x^65536 + x, so terms of degree ≥ 65536 wrap around to degree ≥ 1. The
// hash needs only the middle of the product (a middle product), which the
// wrap-around does not reach while the two inputs are short enough (capacity
// below); longer keys are cut into blocks (toeplitzGF).

import (
	"encoding/binary"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
)

const (
	gfPoly  = 0x1002D // z^16 + z^5 + z^3 + z^2 + 1, primitive
	gfOrder = 65535   // multiplicative group order
	zeroLog = 1 << 17 // the "logarithm" of 0: every sum with it indexes exp's zero tail
	maxK    = 16      // largest transform: 2^16 points, all of GF(2^16)
	splitN  = 128     // twiddles with split multiplication tables (levels ≥ 8)
)

// cantor is Cantor's basis of GF(2^16): β_0 = 1, β_i² + β_i = β_{i−1}.
var cantor = [16]uint16{0x0001, 0xacca, 0x3c0e, 0x163e, 0xc582, 0xed2e, 0x914c, 0x4012,
	0x6c98, 0x10d8, 0x6a72, 0xb900, 0xfdb8, 0xfb34, 0xff38, 0x991e}

type gfTables struct {
	log   [1 << 16]uint32       // log[a] base z; log[0] = zeroLog
	exp   [2*zeroLog + 1]uint16 // exp[i] = z^(i mod 65535) for i < 2·65535, then 0
	tw    [1 << 15]uint16       // tw[b] = ω(2b), the twiddle of every block starting at b·2^(i+1) on level i
	twLog [1 << 15]uint32       // log of tw[b]
	split [splitN][512]uint16   // split[b][v] = tw[b]·v, split[b][256+v] = tw[b]·(v<<8), v < 256
}

var (
	gfOnce sync.Once
	gf     *gfTables
)

func tables() *gfTables {
	gfOnce.Do(func() {
		t := new(gfTables)
		x := uint32(1)
		for i := 0; i < gfOrder; i++ {
			t.exp[i] = uint16(x)
			t.exp[i+gfOrder] = uint16(x)
			t.log[x] = uint32(i)
			x <<= 1
			if x&0x10000 != 0 {
				x ^= gfPoly
			}
		}
		t.log[0] = zeroLog
		for b := 1; b < len(t.tw); b++ {
			// ω(2b): the basis elements of b's bits, shifted up by one
			t.tw[b] = t.tw[b&(b-1)] ^ cantor[bits.TrailingZeros(uint(b))+1]
		}
		for b := range t.tw {
			t.twLog[b] = t.log[t.tw[b]]
		}
		for b := range t.split {
			for v := 0; v < 256; v++ {
				t.split[b][v] = t.mul(uint16(v), t.tw[b])
				t.split[b][256+v] = t.mul(uint16(v<<8), t.tw[b])
			}
		}
		gf = t
	})
	return gf
}

// mul returns a·b in GF(2^16).
func (t *gfTables) mul(a, b uint16) uint16 { return t.exp[t.log[a]+t.log[b]] }

// capacity is the largest m+k such that the middle product of an
// (m+k−1)-coefficient sequence by a k-coefficient one (outputs k−1 … k+m−2)
// survives the reduction modulo s_K: s_K = x^(2^K) + Σ_{j ⊊ K} x^(2^j), so a
// term of degree d ≥ 2^K folds onto degrees d − 2^K + 2^j, at most
// d − 2^K + 2^jmax with jmax = K with its lowest bit cleared.
func capacity(K int) int { return 1<<K + 1 - 1<<(K&(K-1)) }

// The transforms work on coefficient arrays of 2 bytes per element
// (little-endian), so that additions (XORs) of long runs go 8 bytes at a
// time without unsafe.
var le = binary.LittleEndian

// Conversion to the novel basis. Dividing by s_{k−1}, then by s_{k−2}, …
// costs Σ_i (2^popcount(i) − 1)/2 ≈ 32 additions per element for k = 16,
// as s_i has 2^popcount(i) terms. Instead: s_{a+b} = s_a∘s_b, so with τ =
// 2^k2 (k2 a power of two, s_k2 = x^τ + x) and y = s_k2(x),
// X_{m1·τ+m2}(x) = X_{m1}(y)·X_{m2}(x) (the basis of the top k1 = k−k2
// levels in y, times that of the bottom k2 levels in x). So: expand f in
// powers of y (taylor), f = Σ_q g_q(x)·y^q with deg g_q < τ; convert each
// g_q (a row of τ coefficients) on k2 levels; then convert, for each
// position in the rows, the column of coefficients of y^q on k1 levels —
// the same algorithm with rows as elements. That is 16 additions per element
// for k = 16, mostly of long aligned runs.

// toNovel converts in place a polynomial of degree < 2^k whose coefficients
// are vectors of e field elements (a holds 2^k·e elements, 2 bytes each)
// from the monomial to the novel basis.
func toNovel(a []byte, k, e int) {
	switch {
	case k <= 1: // X_0 = 1, X_1 = s_0 = x
		return
	case k == 4 && e == 1:
		a = a[:32]
		w0, w1, w2, w3 := divide16(le.Uint64(a[0:]), le.Uint64(a[8:]), le.Uint64(a[16:]), le.Uint64(a[24:]))
		le.PutUint64(a[0:], w0)
		le.PutUint64(a[8:], w1)
		le.PutUint64(a[16:], w2)
		le.PutUint64(a[24:], w3)
		return
	}
	if k == 16 && e == 1 {
		// the rows of 256 would be converted in short runs: transposed,
		// they are converted as columns, in runs of whole rows
		taylor(a, 16, 8, 1)
		transpose256(a)
		toNovel(a, 8, 256)
		transpose256(a)
		toNovel(a, 8, 256)
		return
	}
	k2 := 1 << (bits.Len(uint(k-1)) - 1) // the largest power of two < k
	taylor(a, k, k2, e)
	row := 2 * e << k2 // bytes
	for q := 0; q < len(a); q += row {
		toNovel(a[q:q+row], k2, e)
	}
	toNovel(a, k-k2, e<<k2)
}

// fromNovel is toNovel's inverse.
func fromNovel(a []byte, k, e int) {
	switch {
	case k <= 1:
		return
	case k == 4 && e == 1:
		a = a[:32]
		w0, w1, w2, w3 := undivide16(le.Uint64(a[0:]), le.Uint64(a[8:]), le.Uint64(a[16:]), le.Uint64(a[24:]))
		le.PutUint64(a[0:], w0)
		le.PutUint64(a[8:], w1)
		le.PutUint64(a[16:], w2)
		le.PutUint64(a[24:], w3)
		return
	}
	if k == 16 && e == 1 {
		fromNovel(a, 8, 256)
		transpose256(a)
		fromNovel(a, 8, 256)
		transpose256(a)
		untaylor(a, 16, 8, 1)
		return
	}
	k2 := 1 << (bits.Len(uint(k-1)) - 1)
	fromNovel(a, k-k2, e<<k2)
	row := 2 * e << k2
	for q := 0; q < len(a); q += row {
		fromNovel(a[q:q+row], k2, e)
	}
	untaylor(a, k, k2, e)
}

// transpose256 transposes in place the 256×256 matrix of elements a holds,
// by blocks of 4×4 (four words of four elements).
func transpose256(a []byte) {
	const lo16, lo32 = 0x0000_FFFF_0000_FFFF, 0x0000_0000_FFFF_FFFF
	tr := func(b []byte) (uint64, uint64, uint64, uint64) {
		w0, w1, w2, w3 := le.Uint64(b), le.Uint64(b[512:]), le.Uint64(b[1024:]), le.Uint64(b[1536:])
		t0, t1 := w0&lo16|(w1&lo16)<<16, w0>>16&lo16|w1&^lo16
		t2, t3 := w2&lo16|(w3&lo16)<<16, w2>>16&lo16|w3&^lo16
		return t0&lo32 | t2<<32, t1&lo32 | t3<<32, t0>>32 | t2&^lo32, t1>>32 | t3&^lo32
	}
	put := func(b []byte, r0, r1, r2, r3 uint64) {
		le.PutUint64(b, r0)
		le.PutUint64(b[512:], r1)
		le.PutUint64(b[1024:], r2)
		le.PutUint64(b[1536:], r3)
	}
	for i := 0; i < 256; i += 4 {
		for j := i; j < 256; j += 4 {
			x, y := a[2*(256*i+j):], a[2*(256*j+i):]
			x0, x1, x2, x3 := tr(x)
			y0, y1, y2, y3 := tr(y)
			put(x, y0, y1, y2, y3)
			put(y, x0, x1, x2, x3)
		}
	}
}

// taylor expands f (2^k coefficients of e elements) in powers of y = x^τ +
// x, τ = 2^k2: f = f0 + y^(2^(k−k2−1))·f1 with y^(2^j) = x^(τ·2^j) + x^(2^j),
// a division by a binomial (f[i−D] += f[i] for i descending, D = t − t/τ,
// t = 2^(k−1), in runs of D), then f0 and f1 recursively. The coefficient
// of y^q ends in row q.
func taylor(a []byte, k, k2, e int) {
	if k <= k2 {
		return
	}
	t := 1 << (k - 1)
	d := t - t>>k2
	for T := 2 * t; T > t; T -= d {
		lo := max(T-d, t)
		xorInto(a[2*e*(lo-d):2*e*(T-d)], a[2*e*lo:2*e*T])
	}
	taylor(a[:2*e*t], k-1, k2, e)
	taylor(a[2*e*t:], k-1, k2, e)
}

// untaylor is taylor's inverse: the same additions in reverse order (runs
// ascending; an addition reading f[i] still precedes the one writing it).
func untaylor(a []byte, k, k2, e int) {
	if k <= k2 {
		return
	}
	t := 1 << (k - 1)
	d := t - t>>k2
	untaylor(a[:2*e*t], k-1, k2, e)
	untaylor(a[2*e*t:], k-1, k2, e)
	for lo := t; lo < 2*t; lo += d {
		T := min(lo+d, 2*t)
		xorInto(a[2*e*(lo-d):2*e*(T-d)], a[2*e*lo:2*e*T])
	}
}

// xorInto adds src to dst (same length or longer); dst and src may overlap
// only if dst starts below src.
func xorInto(dst, src []byte) {
	dst = dst[:len(src)]
	i := 0
	for ; i+32 <= len(src); i += 32 {
		d := dst[i : i+32 : i+32]
		s := src[i : i+32 : i+32]
		le.PutUint64(d[0:], le.Uint64(d[0:])^le.Uint64(s[0:]))
		le.PutUint64(d[8:], le.Uint64(d[8:])^le.Uint64(s[8:]))
		le.PutUint64(d[16:], le.Uint64(d[16:])^le.Uint64(s[16:]))
		le.PutUint64(d[24:], le.Uint64(d[24:])^le.Uint64(s[24:]))
	}
	for ; i+8 <= len(src); i += 8 {
		le.PutUint64(dst[i:], le.Uint64(dst[i:])^le.Uint64(src[i:]))
	}
	for ; i < len(src); i++ {
		dst[i] ^= src[i]
	}
}

// mulWord multiplies the four elements of x by the twiddle whose split
// tables are s.
func mulWord(x uint64, s *[512]uint16) uint64 {
	return uint64(s[x&255]^s[256+x>>8&255]) |
		uint64(s[x>>16&255]^s[256+x>>24&255])<<16 |
		uint64(s[x>>32&255]^s[256+x>>40&255])<<32 |
		uint64(s[x>>48&255]^s[256+x>>56])<<48
}

// mulLog multiplies x by the element of logarithm lc (zeroLog for 0).
func (t *gfTables) mulLog(x uint64, lc uint32) uint64 {
	return uint64(t.exp[t.log[uint16(x)]+lc])
}

// mul4 multiplies the four elements of x by the element of logarithm lc.
func (t *gfTables) mul4(x uint64, lc uint32) uint64 {
	return t.mulLog(x, lc) | t.mulLog(x>>16, lc)<<16 | t.mulLog(x>>32, lc)<<32 | t.mulLog(x>>48, lc)<<48
}

// butterfly is the forward butterfly of one block with twiddle c = tw[b]:
// u += c·v, then v += u. The halves hold a multiple of 4 elements.
func (t *gfTables) butterfly(u, v []byte, b int) {
	v = v[:len(u)]
	switch {
	case b == 0: // c = 0
		xorInto(v, u)
	case b < splitN:
		s := &t.split[b]
		for j := 0; j+8 <= len(u); j += 8 {
			x := le.Uint64(u[j:]) ^ mulWord(le.Uint64(v[j:]), s)
			le.PutUint64(u[j:], x)
			le.PutUint64(v[j:], le.Uint64(v[j:])^x)
		}
	default:
		lc := t.twLog[b]
		for j := 0; j+8 <= len(u); j += 8 {
			x := le.Uint64(u[j:]) ^ t.mul4(le.Uint64(v[j:]), lc)
			le.PutUint64(u[j:], x)
			le.PutUint64(v[j:], le.Uint64(v[j:])^x)
		}
	}
}

// unbutterfly undoes butterfly: v += u, then u += c·v.
func (t *gfTables) unbutterfly(u, v []byte, b int) {
	v = v[:len(u)]
	switch {
	case b == 0:
		xorInto(v, u)
	case b < splitN:
		s := &t.split[b]
		for j := 0; j+8 <= len(u); j += 8 {
			x := le.Uint64(u[j:])
			y := le.Uint64(v[j:]) ^ x
			le.PutUint64(v[j:], y)
			le.PutUint64(u[j:], x^mulWord(y, s))
		}
	default:
		lc := t.twLog[b]
		for j := 0; j+8 <= len(u); j += 8 {
			x := le.Uint64(u[j:])
			y := le.Uint64(v[j:]) ^ x
			le.PutUint64(v[j:], y)
			le.PutUint64(u[j:], x^t.mul4(y, lc))
		}
	}
}

// The last four levels (blocks of 16 elements, four 64-bit words w0…w3 of
// four elements each) in registers. Lane l of a word is bits 16l…16l+15.
const lo32, lane1, lane2 = 0xFFFF_FFFF, 0xFFFF << 16, 0xFFFF << 32

// divide16 divides a 16-element block by s_3 = x^8+x^4+x^2+x, then each
// half by s_2 = x^4+x and each quarter by s_1 = x^2+x: toNovel on 16
// elements.
func divide16(w0, w1, w2, w3 uint64) (uint64, uint64, uint64, uint64) {
	// s_3: a[t−4], a[t−6], a[t−7] += a[t] for t = 15…12 (word 3), then 11…8
	w2 ^= w3 ^ w3>>32 ^ w3>>48
	w1 ^= w3<<32 ^ w3<<16
	w1 ^= w2 ^ w2>>32 ^ w2>>48
	w0 ^= w2<<32 ^ w2<<16
	// s_2: a[t−3] += a[t] for t = 7…4 in each half
	w1 ^= w1 >> 48
	w0 ^= w1 << 16
	w3 ^= w3 >> 48
	w2 ^= w3 << 16
	// s_1: a[2] += a[3], a[1] += a[2] in each word
	w0 = undo1(w0)
	w1 = undo1(w1)
	w2 = undo1(w2)
	w3 = undo1(w3)
	return w0, w1, w2, w3
}

func undo1(w uint64) uint64 {
	w ^= w >> 16 & lane2
	return w ^ w>>16&lane1
}

func redo1(w uint64) uint64 {
	w ^= w >> 16 & lane1
	return w ^ w>>16&lane2
}

// undivide16 is divide16's inverse.
func undivide16(w0, w1, w2, w3 uint64) (uint64, uint64, uint64, uint64) {
	w0 = redo1(w0)
	w1 = redo1(w1)
	w2 = redo1(w2)
	w3 = redo1(w3)
	w2 ^= w3 << 16
	w3 ^= w3 >> 48
	w0 ^= w1 << 16
	w1 ^= w1 >> 48
	w0 ^= w2<<32 ^ w2<<16
	w1 ^= w2 ^ w2>>32 ^ w2>>48
	w1 ^= w3<<32 ^ w3<<16
	w2 ^= w3 ^ w3>>32 ^ w3>>48
	return w0, w1, w2, w3
}

// fwd16 is forward on a block of 16 elements at offset base.
func (t *gfTables) fwd16(a []byte, base int) {
	a = a[:32]
	w0, w1, w2, w3 := le.Uint64(a[0:]), le.Uint64(a[8:]), le.Uint64(a[16:]), le.Uint64(a[24:])
	// level 3
	c := t.twLog[base>>4]
	w0 ^= t.mul4(w2, c)
	w1 ^= t.mul4(w3, c)
	w2 ^= w0
	w3 ^= w1
	// level 2
	b := base >> 3
	w0 ^= t.mul4(w1, t.twLog[b])
	w1 ^= w0
	w2 ^= t.mul4(w3, t.twLog[b+1])
	w3 ^= w2
	// levels 1 and 0, within each word
	b = base >> 2
	w0 = t.fwd4(w0, b)
	w1 = t.fwd4(w1, b+1)
	w2 = t.fwd4(w2, b+2)
	w3 = t.fwd4(w3, b+3)
	le.PutUint64(a[0:], w0)
	le.PutUint64(a[8:], w1)
	le.PutUint64(a[16:], w2)
	le.PutUint64(a[24:], w3)
}

// fwd4: levels 1 and 0 on the four elements of w, the level-1 block index
// being b.
func (t *gfTables) fwd4(w uint64, b int) uint64 {
	c := t.twLog[b]
	w ^= t.mulLog(w>>32, c) | t.mulLog(w>>48, c)<<16
	w ^= w << 32
	c0, c1 := t.twLog[2*b], t.twLog[2*b+1]
	w ^= t.mulLog(w>>16, c0) | t.mulLog(w>>48, c1)<<32
	return w ^ (w&^lane1&^(lane2<<16))<<16
}

// inv4 undoes fwd4.
func (t *gfTables) inv4(w uint64, b int) uint64 {
	w ^= (w &^ lane1 &^ (lane2 << 16)) << 16
	c0, c1 := t.twLog[2*b], t.twLog[2*b+1]
	w ^= t.mulLog(w>>16, c0) | t.mulLog(w>>48, c1)<<32
	w ^= w << 32
	c := t.twLog[b]
	return w ^ (t.mulLog(w>>32, c) | t.mulLog(w>>48, c)<<16)
}

// inv16 is inverse on a block of 16 elements at offset base.
func (t *gfTables) inv16(a []byte, base int) {
	a = a[:32]
	w0, w1, w2, w3 := le.Uint64(a[0:]), le.Uint64(a[8:]), le.Uint64(a[16:]), le.Uint64(a[24:])
	b := base >> 2
	w0 = t.inv4(w0, b)
	w1 = t.inv4(w1, b+1)
	w2 = t.inv4(w2, b+2)
	w3 = t.inv4(w3, b+3)
	b = base >> 3
	w1 ^= w0
	w0 ^= t.mul4(w1, t.twLog[b])
	w3 ^= w2
	w2 ^= t.mul4(w3, t.twLog[b+1])
	c := t.twLog[base>>4]
	w2 ^= w0
	w3 ^= w1
	w0 ^= t.mul4(w2, c)
	w1 ^= t.mul4(w3, c)
	le.PutUint64(a[0:], w0)
	le.PutUint64(a[8:], w1)
	le.PutUint64(a[16:], w2)
	le.PutUint64(a[24:], w3)
}

// slowButterfly is the butterfly of halves of fewer than 4 elements.
func (t *gfTables) slowButterfly(u, v []byte, b int, inv bool) {
	lc := t.twLog[b]
	for j := 0; j < len(u); j += 2 {
		x, y := uint64(le.Uint16(u[j:])), uint64(le.Uint16(v[j:]))
		if inv {
			y ^= x
			x ^= t.mulLog(y, lc)
		} else {
			x ^= t.mulLog(y, lc)
			y ^= x
		}
		le.PutUint16(u[j:], uint16(x))
		le.PutUint16(v[j:], uint16(y))
	}
}

// forward turns the novel-basis coefficients of a polynomial of degree <
// n = 2^k (a holds 2n bytes; toNovel) into its values: element u becomes
// f(ω(base + u)) (base = 0 at the top; the recursion passes the offset of
// the block). Depth first, so that blocks are finished while in cache.
func (t *gfTables) forward(a []byte, base int) {
	n := len(a) / 2
	switch {
	case n == 16:
		t.fwd16(a, base)
	case n < 16: // tiny transforms, one level at a time
		for h := n / 2; h >= 1; h /= 2 {
			i := bits.TrailingZeros(uint(h))
			for s := 0; s < n; s += 2 * h {
				t.slowButterfly(a[2*s:2*(s+h)], a[2*(s+h):2*(s+2*h)], (base+s)>>(i+1), false)
			}
		}
	default:
		h := n / 2
		i := bits.TrailingZeros(uint(h))
		t.butterfly(a[:2*h], a[2*h:], base>>(i+1))
		t.forward(a[:2*h], base)
		t.forward(a[2*h:], base+h)
	}
}

// inverse is forward's inverse: values at ω(base + u) in, novel-basis
// coefficients out.
func (t *gfTables) inverse(a []byte, base int) {
	n := len(a) / 2
	switch {
	case n == 16:
		t.inv16(a, base)
	case n < 16:
		for h := 1; h < n; h *= 2 {
			i := bits.TrailingZeros(uint(h))
			for s := 0; s < n; s += 2 * h {
				t.slowButterfly(a[2*s:2*(s+h)], a[2*(s+h):2*(s+2*h)], (base+s)>>(i+1), true)
			}
		}
	default:
		h := n / 2
		i := bits.TrailingZeros(uint(h))
		t.inverse(a[:2*h], base)
		t.inverse(a[2*h:], base+h)
		t.unbutterfly(a[:2*h], a[2*h:], base>>(i+1))
	}
}

// toeplitzGF returns bits [n−1, n−1+l) of the GF(2)[z] product of the seed
// bytes sb (n+l−1 bits) and the key bytes xb (n bits), as l bits, with
// transforms of at most 2^maxk points (maxK; tests use less to exercise
// the blocks).
func toeplitzGF(xb, sb []byte, n, l, maxk int) []uint64 {
	t := tables()
	// C_t for t in [tlo, thi] covers the wanted bits: C_t holds bits
	// 8t … 8t+14 of the product.
	K := len(xb)
	tlo := 0
	if n >= 15 {
		tlo = (n - 15 + 7) / 8
	}
	thi := (n + l - 2) / 8
	M := thi - tlo + 1
	// One transform of size 2^k when the middle product fits it, else
	// blocks of at most capacity(maxk)/2 key bytes and as many outputs on
	// transforms of 2^maxk points.
	k := 1
	for k < maxk && capacity(k) < M+K {
		k++
	}
	bk, bm := K, M
	if capacity(k) < M+K {
		half := capacity(k) / 2
		nk, nm := (K+half-1)/half, (M+half-1)/half
		bk = max((K+nk-1)/nk, (M+nm-1)/nm)
		bm = bk
	}
	N := 1 << k
	nk, nm := (K+bk-1)/bk, (M+bm-1)/bm
	// Output block o and key block q need the seed bytes from
	// tlo + o·bm − (q+1)·bk + 1 on (bm+bk−1 of them); with bm = bk they
	// depend on o−q only.
	seg := func(o, q int) int { return o*bm - q*bk }
	segIdx := map[int]int{}
	var segs []int
	for o := 0; o < nm; o++ {
		for q := 0; q < nk; q++ {
			if _, ok := segIdx[seg(o, q)]; !ok {
				segIdx[seg(o, q)] = len(segs)
				segs = append(segs, seg(o, q))
			}
		}
	}
	// Transform the key blocks and the seed segments, keep their logs
	// (arrays from a pool: a hash of 10^6 bits needs 11 of 256 KiB, which
	// would otherwise keep the garbage collector busy).
	logs := make([][]uint32, nk+len(segs))
	defer func() {
		for _, lg := range logs {
			if lg != nil {
				logPool.Put((*[1 << maxK]uint32)(lg[:1<<maxK]))
			}
		}
	}()
	parallel(len(logs), func(job int, buf []byte) {
		a := buf[:2*N]
		clear(a)
		if job < nk {
			q := job
			for j := 0; j < bk && q*bk+j < K; j++ {
				a[2*j] = xb[q*bk+j]
			}
		} else {
			start := tlo + segs[job-nk] - bk + 1
			for v := 0; v < bm+bk-1; v++ {
				if u := start + v; u >= 0 && u < len(sb) {
					a[2*v] = sb[u]
				}
			}
		}
		toNovel(a, k, 1)
		t.forward(a, 0)
		lg := logPool.Get().(*[1 << maxK]uint32)[:N]
		for f := range lg {
			lg[f] = t.log[le.Uint16(a[2*f:])]
		}
		logs[job] = lg
	}, 2*N)
	// Per output block: multiply pointwise, sum over the key blocks and
	// interpolate; output w = o·bm + i is coefficient bk−1+i of the block
	// product.
	cs := make([]uint16, M)
	parallel(nm, func(o int, buf []byte) {
		acc := buf[:2*N]
		clear(acc)
		for q := 0; q < nk; q++ {
			lx, ls := logs[q], logs[nk+segIdx[seg(o, q)]]
			ls = ls[:len(lx)]
			for f := range lx {
				p := acc[2*f : 2*f+2]
				le.PutUint16(p, le.Uint16(p)^t.exp[lx[f]+ls[f]])
			}
		}
		t.inverse(acc, 0)
		fromNovel(acc, k, 1)
		for i := o * bm; i < min(o*bm+bm, M); i++ {
			cs[i] = le.Uint16(acc[2*(bk-1+i-o*bm):])
		}
	}, 2*N)
	// Overlap-add the 15-bit C_t into bytes r (r[0] is byte tlo of the
	// product), then take bits n−1 … n+l−2.
	r := make([]byte, M+16)
	for w, v := range cs {
		r[w] ^= byte(v)
		r[w+1] ^= byte(v >> 8)
	}
	off := n - 1 - 8*tlo
	out := make([]uint64, (l+63)/64)
	for i := range out {
		p := off + 64*i
		b, sh := p/8, uint(p%8)
		w := binary.LittleEndian.Uint64(r[b:]) >> sh
		if sh != 0 {
			w |= uint64(r[b+8]) << (64 - sh)
		}
		out[i] = w
	}
	if l%64 != 0 {
		out[len(out)-1] &= 1<<(uint(l)%64) - 1
	}
	return out
}

var (
	logPool = sync.Pool{New: func() any { return new([1 << maxK]uint32) }}
	bufPool = sync.Pool{New: func() any { return new([2 << maxK]byte) }}
)

// parallel runs f(0) … f(jobs−1) on up to GOMAXPROCS goroutines, each with a
// scratch buffer of bufLen ≤ 2^(maxK+1) bytes.
func parallel(jobs int, f func(job int, buf []byte), bufLen int) {
	w := min(runtime.GOMAXPROCS(0), jobs)
	if w <= 1 {
		b := bufPool.Get().(*[2 << maxK]byte)
		for j := 0; j < jobs; j++ {
			f(j, b[:bufLen])
		}
		bufPool.Put(b)
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := bufPool.Get().(*[2 << maxK]byte)
			defer bufPool.Put(b)
			buf := b[:bufLen]
			for {
				j := int(next.Add(1)) - 1
				if j >= jobs {
					return
				}
				f(j, buf)
			}
		}()
	}
	wg.Wait()
}
