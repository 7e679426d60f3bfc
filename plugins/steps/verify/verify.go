// Package verify checks that Alice's and Bob's reconciled keys are equal with
// a Toeplitz hash: a random t×n Toeplitz matrix over GF(2), t ≤ 64, drawn
// from n+t−1 seed bits of Alice's. Toeplitz matrices are a 2-universal
// family, so two different keys get the same tag with probability 2^-t:
// ε_cor = 2^-t.
//
// Input: the reconciled key (wire vec). Params: u8 t (1..64).
// Messages: Alice → Bob: bytes seed (ceil((n+t−1)/8)), u64 tag;
// Bob → Alice: u8 verdict (1 = equal). Two rounds; Leaked = t.
// Output (both): u8 verdict. The host aborts unless it is 1.
//
// Seed: if the host's seed holds ceil((n+t−1)/8) bytes it is used as is,
// otherwise it is expanded with ChaCha8.
package verify

import (
	"fmt"
	mbits "math/bits"

	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/wire"
)

const (
	Name    = "verify"
	Version = "1.0.0"
)

type verify struct {
	role  steps.Role
	t     int
	seed  []byte
	key   bits.Vec
	state int
	m     steps.Metrics
}

// New creates a verify instance.
func New(role steps.Role, params, seed []byte) (steps.Step, error) {
	r := wire.Reader{B: params}
	t := int(r.U8())
	if err := r.Done(); err != nil || t < 1 || t > 64 {
		return nil, fmt.Errorf("%w: verify params: want u8 t in 1..64", steps.ErrParams)
	}
	return &verify{role: role, t: t, seed: append([]byte(nil), seed...)}, nil
}

// Tag computes the t-bit Toeplitz hash of key under seed (n+t−1 bits):
// tag bit i = ⊕_j s[i+j]·key[j].
func Tag(key bits.Vec, seed bits.Vec, t int) uint64 {
	var acc uint64
	for wi, w := range key.W {
		for w != 0 {
			b := mbits.TrailingZeros64(w)
			w &= w - 1
			j := wi*64 + b
			acc ^= window(seed, j)
		}
	}
	if t < 64 {
		acc &= (uint64(1) << uint(t)) - 1
	}
	return acc
}

// window returns seed bits [j, j+64) (bits past the end read as 0).
func window(s bits.Vec, j int) uint64 {
	w, o := j>>6, uint(j&63)
	x := s.W[w] >> o
	if o != 0 && w+1 < len(s.W) {
		x |= s.W[w+1] << (64 - o)
	}
	return x
}

func (v *verify) Step(in steps.Input) (steps.Result, error) {
	switch {
	case v.state == 0 && !in.HasPeer:
		r := wire.Reader{B: in.Data}
		v.key = r.Vec()
		if err := r.Done(); err != nil {
			return steps.Result{}, fmt.Errorf("%w: verify input: %w", steps.ErrInput, err)
		}
		v.state = 1
		if v.role == steps.Bob {
			return steps.Result{Metrics: v.m}, nil
		}
		sl := v.key.N + v.t - 1
		sb := bits.SeedBytes(v.seed, "qkdkms/verify", (sl+7)/8)
		s, _ := bits.FromBytes(sb, sl)
		w := wire.Writer{}
		w.B = append(w.B, sb...)
		w.U64(Tag(v.key, s, v.t))
		v.m.Rounds++
		v.m.Leaked += uint64(v.t)
		return steps.Result{Msg: w.B, HasMsg: true, Metrics: v.m}, nil
	case v.state == 1 && in.HasPeer && v.role == steps.Bob:
		v.m.Rounds++
		v.m.Leaked += uint64(v.t)
		sl := v.key.N + v.t - 1
		r := wire.Reader{B: in.Peer}
		sb := r.Raw((sl + 7) / 8)
		tag := r.U64()
		if err := r.Done(); err != nil {
			return steps.Result{}, fmt.Errorf("%w: verify: Alice's message: %w", steps.ErrProtocol, err)
		}
		s, _ := bits.FromBytes(sb, sl)
		verdict := uint8(0)
		if Tag(v.key, s, v.t) == tag {
			verdict = 1
		}
		v.m.Rounds++
		v.state = 2
		return steps.Result{Output: []byte{verdict}, Msg: []byte{verdict}, HasMsg: true, Done: true, Metrics: v.m}, nil
	case v.state == 1 && in.HasPeer && v.role == steps.Alice:
		v.m.Rounds++
		if len(in.Peer) != 1 || in.Peer[0] > 1 {
			return steps.Result{}, fmt.Errorf("%w: verify: Bob's verdict", steps.ErrProtocol)
		}
		v.state = 2
		return steps.Result{Output: []byte{in.Peer[0]}, Done: true, Metrics: v.m}, nil
	}
	return steps.Result{}, fmt.Errorf("%w: verify: unexpected call in state %d", steps.ErrProtocol, v.state)
}
