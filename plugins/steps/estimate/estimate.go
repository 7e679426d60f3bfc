// Package estimate is parameter estimation: both parties disclose their
// X-basis (test) bits, count the errors per intensity and pass on the Z-basis
// (key) bits with the statistics the finite-key bound needs.
//
// Input: a sift.Sifted. Params: none (empty).
// Messages: Alice → Bob her X bits; Bob → Alice his X bits. Two rounds.
// Disclosed = 2·n_X bits that are not part of the key; Leaked = 0 (the X
// bits are independent of the Z key).
//
// Output (wire): u8 K, K × (u64 n_Z,k, u64 n_X,k, u64 m_X,k), vec Z key.
package estimate

import (
	"fmt"

	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/sift"
	"qkdkms/plugins/steps/wire"
)

const (
	Name    = "estimate"
	Version = "1.0.0"
)

// Stats are the per-intensity counts: n_{Z,k}, n_{X,k} and the errors m_{X,k}.
type Stats struct {
	NZ, NX, MX []uint64
}

// QBERX is Σ m_X,k / Σ n_X,k (0 when no X bits).
func (s Stats) QBERX() float64 {
	var n, m uint64
	for k := range s.NX {
		n += s.NX[k]
		m += s.MX[k]
	}
	if n == 0 {
		return 0
	}
	return float64(m) / float64(n)
}

// Output is what estimate hands on.
type Output struct {
	Stats
	Key bits.Vec
}

// Encode returns the wire form.
func (o Output) Encode() []byte {
	w := wire.Writer{}
	w.U8(uint8(len(o.NZ)))
	for k := range o.NZ {
		w.U64(o.NZ[k])
		w.U64(o.NX[k])
		w.U64(o.MX[k])
	}
	w.Vec(o.Key)
	return w.B
}

// DecodeOutput parses the wire form.
func DecodeOutput(b []byte) (Output, error) {
	r := wire.Reader{B: b}
	k := int(r.U8())
	o := Output{Stats: Stats{NZ: make([]uint64, k), NX: make([]uint64, k), MX: make([]uint64, k)}}
	for i := 0; i < k; i++ {
		o.NZ[i], o.NX[i], o.MX[i] = r.U64(), r.U64(), r.U64()
	}
	o.Key = r.Vec()
	if err := r.Done(); err != nil {
		return Output{}, fmt.Errorf("%w: estimate output: %w", steps.ErrInput, err)
	}
	return o, nil
}

type est struct {
	role  steps.Role
	in    sift.Sifted
	state int
	m     steps.Metrics
}

// New creates an estimate instance.
func New(role steps.Role, params, seed []byte) (steps.Step, error) {
	if len(params) != 0 {
		return nil, fmt.Errorf("%w: estimate takes no params", steps.ErrParams)
	}
	return &est{role: role}, nil
}

func (e *est) Step(in steps.Input) (steps.Result, error) {
	switch {
	case e.state == 0 && !in.HasPeer:
		s, err := sift.DecodeSifted(in.Data)
		if err != nil {
			return steps.Result{}, err
		}
		e.in = s
		e.state = 1
		if e.role == steps.Alice {
			return e.send(steps.Result{})
		}
		return steps.Result{Metrics: e.m}, nil
	case e.state == 1 && in.HasPeer:
		e.m.Rounds++
		r := wire.Reader{B: in.Peer}
		peerX := r.Vec()
		if err := r.Done(); err != nil || peerX.N != e.in.X.N {
			return steps.Result{}, fmt.Errorf("%w: estimate: peer X bits: want %d, %v", steps.ErrProtocol, e.in.X.N, err)
		}
		e.m.Disclosed += uint64(peerX.N)
		out := e.output(peerX)
		e.state = 2
		res := steps.Result{Output: out.Encode(), Done: true}
		if e.role == steps.Bob {
			return e.send(res)
		}
		res.Metrics = e.m
		return res, nil
	}
	return steps.Result{}, fmt.Errorf("%w: estimate: unexpected call in state %d", steps.ErrProtocol, e.state)
}

func (e *est) send(r steps.Result) (steps.Result, error) {
	w := wire.Writer{}
	w.Vec(e.in.X)
	e.m.Rounds++
	e.m.Disclosed += uint64(e.in.X.N)
	r.Msg, r.HasMsg, r.Metrics = w.B, true, e.m
	return r, nil
}

func (e *est) output(peerX bits.Vec) Output {
	k := int(e.in.K)
	st := Stats{NZ: make([]uint64, k), NX: make([]uint64, k), MX: make([]uint64, k)}
	for _, x := range e.in.ZInt {
		st.NZ[x]++
	}
	for i, x := range e.in.XInt {
		st.NX[x]++
		if e.in.X.Get(i) != peerX.Get(i) {
			st.MX[x]++
		}
	}
	return Output{Stats: st, Key: e.in.Z}
}
