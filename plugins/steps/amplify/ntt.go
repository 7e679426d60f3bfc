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

// tables holds the twiddles of a transform of size n, stage by stage and
// contiguous: tw[h+j] = ω_{2h}^j for the stage with half-size h (j < h), with
// their Shoup quotients. The inverse transform uses ω_{2h}^{-j} =
// P − ω_{2h}^{h−j}, whose quotient is the bitwise complement.
type tables struct {
	n          int
	tw, tws    []uint32
	scale      uint32 // n^-1 · R (R = 2^32 mod P, undoes Montgomery)
	scaleShoup uint32
}

func newTables(logn uint) *tables {
	n := 1 << logn
	t := &tables{n: n, tw: make([]uint32, n), tws: make([]uint32, n)}
	h := n / 2
	om := powmod(root, uint64(P-1)>>logn)
	x := uint64(1)
	for j := 0; j < h; j++ {
		t.tw[h+j] = uint32(x)
		x = x * om % uint64(P)
	}
	for hh := h / 2; hh >= 1; hh /= 2 {
		for j := 0; j < hh; j++ {
			t.tw[hh+j] = t.tw[2*hh+2*j]
		}
	}
	for i := 1; i < n; i++ {
		t.tws[i] = shoup(t.tw[i])
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
		w := t.tw[half : 2*half : 2*half]
		ws := t.tws[half : 2*half : 2*half]
		for start := 0; start < n; start += 2 * half {
			x := a[start : start+half : start+half]
			y := a[start+half : start+2*half : start+2*half]
			y = y[:len(x)]
			for j := range x {
				u, v := x[j], y[j]
				s := u + v
				if s >= twoP {
					s -= twoP
				}
				x[j] = s
				y[j] = mulShoup(u-v+twoP, w[j], ws[j])
			}
		}
	}
}

// inverse is a decimation-in-time transform: bit-reversed order in, natural
// order out, values in [0, 2P), not yet scaled by n^-1.
func (t *tables) inverse(a []uint32) {
	n := t.n
	for half := 1; half < n; half <<= 1 {
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
		w := t.tw[half : 2*half : 2*half]
		ws := t.tws[half : 2*half : 2*half]
		for start := 0; start < n; start += 2 * half {
			x := a[start : start+half : start+half]
			y := a[start+half : start+2*half : start+2*half]
			y = y[:len(x)]
			// j = 0: twiddle 1
			{
				u, v := x[0], y[0]
				s := u + v
				if s >= twoP {
					s -= twoP
				}
				d := u - v + twoP
				if d >= twoP {
					d -= twoP
				}
				x[0], y[0] = s, d
			}
			for j := 1; j < len(x); j++ {
				u := x[j]
				v := mulShoup(y[j], P-w[half-j], ^ws[half-j])
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
