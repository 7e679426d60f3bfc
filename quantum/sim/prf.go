package sim

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"math/rand/v2"
)

// prf is a keyed pseudo-random function of (frame, index): AES-128 of the
// block frame‖index under a key derived from the seed and a label. Per-pulse
// choices computed from it need no storage and can be looked up in any order.
type prf struct {
	block cipher.Block
}

func newPRF(seed uint64, label string) prf {
	k := deriveKey(seed, label)
	b, err := aes.NewCipher(k[:16])
	if err != nil {
		panic(err) // 16-byte key: cannot fail
	}
	return prf{block: b}
}

// prfBuf is scratch space for prf.at, allocated once per caller so the
// per-pulse calls do not allocate.
type prfBuf [32]byte

// at returns 128 pseudo-random bits for (frame, index).
func (p prf) at(buf *prfBuf, frame, index uint64) (lo, hi uint64) {
	binary.LittleEndian.PutUint64(buf[0:8], frame)
	binary.LittleEndian.PutUint64(buf[8:16], index)
	p.block.Encrypt(buf[16:32], buf[0:16])
	return binary.LittleEndian.Uint64(buf[16:24]), binary.LittleEndian.Uint64(buf[24:32])
}

func deriveKey(seed uint64, label string) [32]byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	h := sha256.New()
	h.Write([]byte("qkdkms/sim/"))
	h.Write([]byte(label))
	h.Write(b[:])
	var k [32]byte
	copy(k[:], h.Sum(nil))
	return k
}

// stream returns a deterministic random stream for (seed, label, frame).
func stream(seed uint64, label string, frame uint64) *rand.Rand {
	k := deriveKey(seed^(frame*0x9e3779b97f4a7c15), label+"/stream")
	var f [8]byte
	binary.LittleEndian.PutUint64(f[:], frame)
	h := sha256.Sum256(append(k[:], f[:]...))
	return rand.New(rand.NewPCG(binary.LittleEndian.Uint64(h[:8]), binary.LittleEndian.Uint64(h[8:16])))
}

// threshold32 maps a probability to a 32-bit threshold: u < t happens with
// probability p for u uniform on [0, 2^32).
func threshold32(p float64) uint64 {
	if p <= 0 {
		return 0
	}
	if p >= 1 {
		return 1 << 32
	}
	return uint64(math.Round(p * (1 << 32)))
}

// permutation is a keyed pseudo-random permutation of [0, n): a four-round
// balanced Feistel network on 2h bits with cycle walking (Black & Rogaway,
// "Ciphers with arbitrary finite domains", CT-RSA 2002).
type permutation struct {
	n    uint64
	h    uint   // half width in bits
	mask uint64 // (1<<h) - 1
	keys [4]uint64
}

func newPermutation(n uint64, r *rand.Rand) permutation {
	bits := uint(1)
	for bits < 64 && (uint64(1)<<bits) < n {
		bits++
	}
	h := (bits + 1) / 2
	p := permutation{n: n, h: h, mask: (uint64(1) << h) - 1}
	for i := range p.keys {
		p.keys[i] = r.Uint64()
	}
	return p
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func (p *permutation) round(x uint64) uint64 {
	l, r := x>>p.h, x&p.mask
	for _, k := range p.keys {
		l, r = r, l^(mix64(r^k)&p.mask)
	}
	return l<<p.h | r
}

// at returns π(i) for i < n.
func (p *permutation) at(i uint64) uint64 {
	y := p.round(i)
	for y >= p.n {
		y = p.round(y)
	}
	return y
}

// binomial draws from Binomial(n, p) exactly, by Knuth's recursive
// beta-splitting (TAOCP vol. 2, 3.4.1, exercise/algorithm for the binomial
// distribution): O(log n) beta variates, then direct trials for n ≤ 64.
func binomial(r *rand.Rand, n uint64, p float64) uint64 {
	if p <= 0 || n == 0 {
		return 0
	}
	if p >= 1 {
		return n
	}
	var acc uint64
	for n > 64 {
		a := 1 + n/2
		b := n + 1 - a
		x := betaVariate(r, float64(a), float64(b))
		if x >= p {
			n = a - 1
			p /= x
		} else {
			acc += a
			n = b - 1
			p = (p - x) / (1 - x)
		}
		if p <= 0 {
			return acc
		}
		if p >= 1 {
			return acc + n
		}
	}
	for range n {
		if r.Float64() < p {
			acc++
		}
	}
	return acc
}

func betaVariate(r *rand.Rand, a, b float64) float64 {
	x := gammaVariate(r, a)
	y := gammaVariate(r, b)
	return x / (x + y)
}

// gammaVariate draws from Gamma(a, 1), a ≥ 1, by Marsaglia & Tsang,
// ACM TOMS 26, 363 (2000).
func gammaVariate(r *rand.Rand, a float64) float64 {
	d := a - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := r.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := r.Float64()
		if u < 1-0.0331*x*x*x*x {
			return d * v
		}
		if math.Log(u) < 0.5*x*x+d*(1-v+math.Log(v)) {
			return d * v
		}
	}
}

// multinomial splits n trials over probabilities ps (summing to 1).
func multinomial(r *rand.Rand, n uint64, ps []float64) []uint64 {
	out := make([]uint64, len(ps))
	rest := 1.0
	for k, p := range ps {
		if k == len(ps)-1 || rest <= 0 {
			out[k] = n
			break
		}
		c := binomial(r, n, math.Min(1, p/rest))
		out[k] = c
		n -= c
		rest -= p
	}
	return out
}

// gap returns the number of failures before the next success of a
// Bernoulli(p) sequence (geometric distribution), using −ln U ~ Exp(1).
// invLog is −1/ln(1−p).
func gap(r *rand.Rand, invLog float64) uint64 {
	g := r.ExpFloat64() * invLog
	if g >= 1<<62 {
		return 1 << 62
	}
	return uint64(g)
}

func invLogFor(p float64) float64 {
	if p >= 1 {
		return 0
	}
	return -1 / math.Log1p(-p)
}
