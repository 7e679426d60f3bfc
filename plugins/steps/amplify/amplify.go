// Package amplify is privacy amplification by Toeplitz hashing: the final key
// is y = T·x over GF(2), where x is the n-bit reconciled key and T the ℓ×n
// Toeplitz matrix T[i][j] = s[i−j+n−1] given by n+ℓ−1 seed bits of Alice's.
// y_i is bit i+n−1 of the GF(2)[z] product s·x, computed exactly with an
// additive FFT over GF(2^16) on the bytes of s and x (gf.go), in blocks for
// long keys, on all cores.
//
// Input: the reconciled key (wire vec). Params: u32 ℓ (1 ≤ ℓ ≤ n), chosen by
// the host from the finite-key bound.
// Message: Alice → Bob: u32 ℓ, raw ceil((n+ℓ−1)/8) seed bytes. One round.
// Output: wire vec of ℓ bits. Leaked = 0.
//
// Seed: if the host's seed holds ceil((n+ℓ−1)/8) bytes it is used as is,
// otherwise it is expanded with ChaCha8.
package amplify

import (
	"fmt"

	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/wire"
)

const (
	Name    = "amplify"
	Version = "1.0.0"
	// maxLog bounds the seed: n+ℓ−1 ≤ 2^maxLog bits, else a parameter
	// error (the limit of the first, NTT-based implementation, kept so that
	// every version of the plugin accepts the same inputs).
	maxLog = 26
)

// Toeplitz returns T·x for the ℓ×n Toeplitz matrix given by seed s
// (s.N = x.N+ℓ−1): bits n−1 … n+ℓ−2 of the GF(2)[z] product s·x, computed
// with an additive FFT over GF(2^16) (gf.go).
func Toeplitz(x, s bits.Vec, l int) bits.Vec {
	out := bits.New(l)
	copy(out.W, toeplitzGF(x.Bytes(), s.Bytes(), x.N, l, maxK))
	return out
}

// Naive computes T·x directly (for tests): y_i = ⊕_j s[i−j+n−1]·x_j.
func Naive(x, s bits.Vec, l int) bits.Vec {
	n := x.N
	out := bits.New(l)
	for i := 0; i < l; i++ {
		var p uint8
		for j := 0; j < n; j++ {
			p ^= s.Get(i-j+n-1) & x.Get(j)
		}
		out.Set(i, p)
	}
	return out
}

type amp struct {
	role  steps.Role
	l     int
	seed  []byte
	key   bits.Vec
	state int
	m     steps.Metrics
}

// New creates an amplify instance.
func New(role steps.Role, params, seed []byte) (steps.Step, error) {
	r := wire.Reader{B: params}
	l := int(r.U32())
	if err := r.Done(); err != nil || l < 1 {
		return nil, fmt.Errorf("%w: amplify params: want u32 ℓ ≥ 1", steps.ErrParams)
	}
	return &amp{role: role, l: l, seed: append([]byte(nil), seed...)}, nil
}

func (a *amp) Step(in steps.Input) (steps.Result, error) {
	switch {
	case a.state == 0 && !in.HasPeer:
		r := wire.Reader{B: in.Data}
		a.key = r.Vec()
		if err := r.Done(); err != nil {
			return steps.Result{}, fmt.Errorf("%w: amplify input: %w", steps.ErrInput, err)
		}
		if a.l > a.key.N || a.key.N+a.l-1 > 1<<maxLog {
			return steps.Result{}, fmt.Errorf("%w: amplify: ℓ=%d for n=%d", steps.ErrParams, a.l, a.key.N)
		}
		a.state = 1
		if a.role == steps.Bob {
			return steps.Result{Metrics: a.m}, nil
		}
		sl := a.key.N + a.l - 1
		sb := bits.SeedBytes(a.seed, "qkdkms/amplify", (sl+7)/8)
		s, _ := bits.FromBytes(sb, sl)
		w := wire.Writer{B: make([]byte, 0, 4+len(sb))}
		w.U32(uint32(a.l))
		w.B = append(w.B, sb...)
		a.m.Rounds++
		a.state = 2
		out := wire.Writer{}
		out.Vec(Toeplitz(a.key, s, a.l))
		return steps.Result{Output: out.B, Msg: w.B, HasMsg: true, Done: true, Metrics: a.m}, nil
	case a.state == 1 && in.HasPeer && a.role == steps.Bob:
		a.m.Rounds++
		sl := a.key.N + a.l - 1
		r := wire.Reader{B: in.Peer}
		l := int(r.U32())
		sb := r.Raw((sl + 7) / 8)
		if err := r.Done(); err != nil || l != a.l {
			return steps.Result{}, fmt.Errorf("%w: amplify: Alice's message (ℓ %d vs %d): %v", steps.ErrProtocol, l, a.l, err)
		}
		s, _ := bits.FromBytes(sb, sl)
		a.state = 2
		out := wire.Writer{}
		out.Vec(Toeplitz(a.key, s, a.l))
		return steps.Result{Output: out.B, Done: true, Metrics: a.m}, nil
	}
	return steps.Result{}, fmt.Errorf("%w: amplify: unexpected call in state %d", steps.ErrProtocol, a.state)
}
