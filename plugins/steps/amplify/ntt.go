package amplify

// Number-theoretic transform modulo the prime P = 7·2^26 + 1 (< 2^29), with
// primitive root 3. Values are kept lazily in [0, 2P) inside the transforms
// (Harvey's butterflies with Shoup's precomputed twiddle quotients), which
// is exact: the convolution of two 0/1 sequences of length ≤ 2^26 has
// coefficients < P.

const (
	P      uint32 = 469762049
	twoP   uint32 = 2 * P
	root   uint64 = 3
	maxLog        = 26
)

func powmod(a, e uint64) uint64 {
	r := uint64(1)
	a %= uint64(P)
	for e > 0 {
		if e&1 == 1 {
			r = r * a % uint64(P)
		}
		a = a * a % uint64(P)
		e >>= 1
	}
	return r
}

// shoup returns floor(w·2^32 / P).
func shoup(w uint32) uint32 { return uint32((uint64(w) << 32) / uint64(P)) }

// mulShoup returns a·w mod P in [0, 2P) for a < 2^32, w < P, ws = shoup(w).
func mulShoup(a, w, ws uint32) uint32 {
	q := uint32((uint64(a) * uint64(ws)) >> 32)
	return a*w - q*P
}

// tables holds, for a transform of size n, the twiddles ω^j (j < n/2) for
// the forward and the inverse transform and their Shoup quotients.
type tables struct {
	n          int
	w, ws      []uint32 // forward: ω_n^j
	iw, iws    []uint32 // inverse: ω_n^-j
	scale      uint32   // n^-1 · R (R = 2^32 mod P, undoes Montgomery)
	scaleShoup uint32
}

func newTables(logn uint) *tables {
	n := 1 << logn
	h := n / 2
	t := &tables{n: n, w: make([]uint32, h), ws: make([]uint32, h), iw: make([]uint32, h), iws: make([]uint32, h)}
	om := powmod(root, uint64(P-1)>>logn)
	iom := powmod(om, uint64(P-2))
	x, y := uint64(1), uint64(1)
	for j := 0; j < h; j++ {
		t.w[j], t.ws[j] = uint32(x), shoup(uint32(x))
		t.iw[j], t.iws[j] = uint32(y), shoup(uint32(y))
		x = x * om % uint64(P)
		y = y * iom % uint64(P)
	}
	ninv := powmod(uint64(n), uint64(P-2))
	r := (uint64(1) << 32) % uint64(P)
	t.scale = uint32(ninv * r % uint64(P))
	t.scaleShoup = shoup(t.scale)
	return t
}

// forward is a decimation-in-frequency transform: natural order in,
// bit-reversed order out, values in [0, 2P).
func (t *tables) forward(a []uint32) {
	n := t.n
	for half := n / 2; half >= 1; half >>= 1 {
		stride := (n / 2) / half
		if half == 1 {
			for i := 0; i < n; i += 2 {
				u, v := a[i], a[i+1]
				s := u + v
				if s >= twoP {
					s -= twoP
				}
				d := u - v + twoP
				if d >= twoP {
					d -= twoP
				}
				a[i], a[i+1] = s, d
			}
			continue
		}
		for start := 0; start < n; start += 2 * half {
			x := a[start : start+half : start+half]
			y := a[start+half : start+2*half : start+2*half]
			for j := range x {
				u, v := x[j], y[j]
				s := u + v
				if s >= twoP {
					s -= twoP
				}
				k := j * stride
				x[j] = s
				y[j] = mulShoup(u-v+twoP, t.w[k], t.ws[k])
			}
		}
	}
}

// inverse is a decimation-in-time transform: bit-reversed order in, natural
// order out, values in [0, 2P), not yet scaled by n^-1.
func (t *tables) inverse(a []uint32) {
	n := t.n
	for half := 1; half < n; half <<= 1 {
		stride := (n / 2) / half
		if half == 1 {
			for i := 0; i < n; i += 2 {
				u, v := a[i], a[i+1]
				s := u + v
				if s >= twoP {
					s -= twoP
				}
				d := u - v + twoP
				if d >= twoP {
					d -= twoP
				}
				a[i], a[i+1] = s, d
			}
			continue
		}
		for start := 0; start < n; start += 2 * half {
			x := a[start : start+half : start+half]
			y := a[start+half : start+2*half : start+2*half]
			for j := range x {
				k := j * stride
				u := x[j]
				v := mulShoup(y[j], t.iw[k], t.iws[k])
				s := u + v
				if s >= twoP {
					s -= twoP
				}
				d := u - v + twoP
				if d >= twoP {
					d -= twoP
				}
				x[j], y[j] = s, d
			}
		}
	}
}

// Montgomery product a·b·2^-32 mod P in [0, 2P) for a, b < 2P.
const pInvNeg uint32 = 469762047 // -P^-1 mod 2^32

func mulMont(a, b uint32) uint32 {
	t := uint64(a) * uint64(b)
	m := uint32(t) * pInvNeg
	return uint32((t + uint64(m)*uint64(P)) >> 32)
}
