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
		if half <= 4 && n >= 8 {
			t.forwardSmall(a, half)
			continue
		}
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
			// unrolled by 8: fewer loop back-edges, each of which costs a
			// termination check (an exit to Go) in the WASM host
			j := 0
			for ; j+8 <= len(x); j += 8 {
				xx := x[j : j+8 : j+8]
				yy := y[j : j+8 : j+8]
				ww := w[j : j+8 : j+8]
				wws := ws[j : j+8 : j+8]
				xx[0], yy[0] = fwdButterfly(xx[0], yy[0], ww[0], wws[0])
				xx[1], yy[1] = fwdButterfly(xx[1], yy[1], ww[1], wws[1])
				xx[2], yy[2] = fwdButterfly(xx[2], yy[2], ww[2], wws[2])
				xx[3], yy[3] = fwdButterfly(xx[3], yy[3], ww[3], wws[3])
				xx[4], yy[4] = fwdButterfly(xx[4], yy[4], ww[4], wws[4])
				xx[5], yy[5] = fwdButterfly(xx[5], yy[5], ww[5], wws[5])
				xx[6], yy[6] = fwdButterfly(xx[6], yy[6], ww[6], wws[6])
				xx[7], yy[7] = fwdButterfly(xx[7], yy[7], ww[7], wws[7])
			}
			for ; j < len(x); j++ {
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
		if half <= 4 && n >= 8 {
			t.inverseSmall(a, half)
			continue
		}
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
			j := 1
			if len(x) >= 8 {
				// j = 1…7 singly, then by 8 (half is a power of two)
				for ; j < 8; j++ {
					x[j], y[j] = invButterfly(x[j], y[j], P-w[half-j], ^ws[half-j])
				}
				for ; j+8 <= len(x); j += 8 {
					xx := x[j : j+8 : j+8]
					yy := y[j : j+8 : j+8]
					wr := w[half-j-7 : half-j+1 : half-j+1]
					wsr := ws[half-j-7 : half-j+1 : half-j+1]
					xx[0], yy[0] = invButterfly(xx[0], yy[0], P-wr[7], ^wsr[7])
					xx[1], yy[1] = invButterfly(xx[1], yy[1], P-wr[6], ^wsr[6])
					xx[2], yy[2] = invButterfly(xx[2], yy[2], P-wr[5], ^wsr[5])
					xx[3], yy[3] = invButterfly(xx[3], yy[3], P-wr[4], ^wsr[4])
					xx[4], yy[4] = invButterfly(xx[4], yy[4], P-wr[3], ^wsr[3])
					xx[5], yy[5] = invButterfly(xx[5], yy[5], P-wr[2], ^wsr[2])
					xx[6], yy[6] = invButterfly(xx[6], yy[6], P-wr[1], ^wsr[1])
					xx[7], yy[7] = invButterfly(xx[7], yy[7], P-wr[0], ^wsr[0])
				}
			}
			for ; j < len(x); j++ {
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

// invButterfly is the decimation-in-time butterfly (u + wv, u − wv), inputs
// and outputs in [0, 2P).
func invButterfly(u, y, w, ws uint32) (uint32, uint32) {
	q := uint32((uint64(y) * uint64(ws)) >> 32)
	v := y*w - q*P
	s := u + v
	if s >= twoP {
		s -= twoP
	}
	d := u - v + twoP
	if d >= twoP {
		d -= twoP
	}
	return s, d
}

// fwdButterfly is the decimation-in-frequency butterfly (u + v, (u − v)·w),
// inputs and outputs in [0, 2P).
func fwdButterfly(u, v, w, ws uint32) (uint32, uint32) {
	s := u + v
	if s >= twoP {
		s -= twoP
	}
	d := u - v + twoP
	q := uint32((uint64(d) * uint64(ws)) >> 32)
	return s, d*w - q*P
}

// addSub is the twiddle-free butterfly (u + v, u − v), in [0, 2P).
func addSub(u, v uint32) (uint32, uint32) {
	s := u + v
	if s >= twoP {
		s -= twoP
	}
	d := u - v + twoP
	if d >= twoP {
		d -= twoP
	}
	return s, d
}

// forwardSmall is one forward stage with half ∈ {1, 2, 4}, eight values per
// iteration (n ≥ 8); the same arithmetic as the general stage.
func (t *tables) forwardSmall(a []uint32, half int) {
	switch half {
	case 1:
		for i := 0; i+8 <= len(a); i += 8 {
			x := a[i : i+8 : i+8]
			x[0], x[1] = addSub(x[0], x[1])
			x[2], x[3] = addSub(x[2], x[3])
			x[4], x[5] = addSub(x[4], x[5])
			x[6], x[7] = addSub(x[6], x[7])
		}
	case 2:
		w0, w1, s0, s1 := t.tw[2], t.tw[3], t.tws[2], t.tws[3]
		for i := 0; i+8 <= len(a); i += 8 {
			x := a[i : i+8 : i+8]
			x[0], x[2] = fwdButterfly(x[0], x[2], w0, s0)
			x[1], x[3] = fwdButterfly(x[1], x[3], w1, s1)
			x[4], x[6] = fwdButterfly(x[4], x[6], w0, s0)
			x[5], x[7] = fwdButterfly(x[5], x[7], w1, s1)
		}
	case 4:
		w := t.tw[4:8:8]
		ws := t.tws[4:8:8]
		for i := 0; i+8 <= len(a); i += 8 {
			x := a[i : i+8 : i+8]
			x[0], x[4] = fwdButterfly(x[0], x[4], w[0], ws[0])
			x[1], x[5] = fwdButterfly(x[1], x[5], w[1], ws[1])
			x[2], x[6] = fwdButterfly(x[2], x[6], w[2], ws[2])
			x[3], x[7] = fwdButterfly(x[3], x[7], w[3], ws[3])
		}
	}
}

// inverseSmall is one inverse stage with half ∈ {1, 2, 4}, eight values per
// iteration (n ≥ 8); the same arithmetic as the general stage.
func (t *tables) inverseSmall(a []uint32, half int) {
	switch half {
	case 1:
		for i := 0; i+8 <= len(a); i += 8 {
			x := a[i : i+8 : i+8]
			x[0], x[1] = addSub(x[0], x[1])
			x[2], x[3] = addSub(x[2], x[3])
			x[4], x[5] = addSub(x[4], x[5])
			x[6], x[7] = addSub(x[6], x[7])
		}
	case 2:
		w1, s1 := P-t.tw[3], ^t.tws[3]
		for i := 0; i+8 <= len(a); i += 8 {
			x := a[i : i+8 : i+8]
			x[0], x[2] = addSub(x[0], x[2])
			x[1], x[3] = invButterfly(x[1], x[3], w1, s1)
			x[4], x[6] = addSub(x[4], x[6])
			x[5], x[7] = invButterfly(x[5], x[7], w1, s1)
		}
	case 4:
		w1, s1 := P-t.tw[7], ^t.tws[7]
		w2, s2 := P-t.tw[6], ^t.tws[6]
		w3, s3 := P-t.tw[5], ^t.tws[5]
		for i := 0; i+8 <= len(a); i += 8 {
			x := a[i : i+8 : i+8]
			x[0], x[4] = addSub(x[0], x[4])
			x[1], x[5] = invButterfly(x[1], x[5], w1, s1)
			x[2], x[6] = invButterfly(x[2], x[6], w2, s2)
			x[3], x[7] = invButterfly(x[3], x[7], w3, s3)
		}
	}
}
