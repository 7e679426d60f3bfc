// Package sift is the sifting step of BB84. Bob announces the basis of each
// detection, Alice answers with her basis and intensity for each, both keep
// the detections where the bases match, split by basis.
//
// Inputs (wire encoding, plugins/ABI.md §6): both parties list the same
// detections in the same order (the host carried Bob's detected pulse
// indices to Alice and looked up her choices).
//
//	Alice: u32 n, raw ceil(n/8) bits, raw ceil(n/8) bases (1 = X), raw n intensities
//	Bob:   u32 n, raw ceil(n/8) bits, raw ceil(n/8) bases
//
// Params: u8 K, the number of intensity levels (intensity indices < K).
//
// Messages: Bob → Alice his bases (vector); Alice → Bob her bases (vector)
// and intensities (bytes). Two rounds. Bases and intensities are not key
// bits, so nothing is leaked.
//
// Output: see Sifted.
package sift

import (
	"fmt"

	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/wire"
)

const (
	Name    = "sift"
	Version = "1.0.0"
)

// Input is one party's detections (Intensity only for Alice).
type Input struct {
	Bits, Bases bits.Vec
	Intensity   []uint8
}

// Encode returns the wire form of the input for the given role.
func (in Input) Encode(role steps.Role) []byte {
	w := wire.Writer{}
	w.U32(uint32(in.Bits.N))
	w.B = append(w.B, in.Bits.Bytes()...)
	w.B = append(w.B, in.Bases.Bytes()...)
	if role == steps.Alice {
		w.B = append(w.B, in.Intensity...)
	}
	return w.B
}

func decodeInput(role steps.Role, b []byte) (Input, error) {
	r := wire.Reader{B: b}
	n := int(r.U32())
	bb := r.Raw((n + 7) / 8)
	ba := r.Raw((n + 7) / 8)
	var in Input
	if role == steps.Alice {
		in.Intensity = append([]uint8(nil), r.Raw(n)...)
	}
	if err := r.Done(); err != nil {
		return Input{}, fmt.Errorf("%w: sift input: %w", steps.ErrInput, err)
	}
	in.Bits, _ = bits.FromBytes(bb, n)
	in.Bases, _ = bits.FromBytes(ba, n)
	return in, nil
}

// Sifted is the output of sift on both sides: the matching-basis bits of each
// basis with the intensity each was sent with.
//
//	u8 K, vec ZBits, bytes ZInt, vec XBits, bytes XInt
type Sifted struct {
	K          uint8
	Z, X       bits.Vec
	ZInt, XInt []uint8
}

// Encode returns the wire form.
func (s Sifted) Encode() []byte {
	w := wire.Writer{}
	w.U8(s.K)
	w.Vec(s.Z)
	w.Bytes(s.ZInt)
	w.Vec(s.X)
	w.Bytes(s.XInt)
	return w.B
}

// DecodeSifted parses the wire form.
func DecodeSifted(b []byte) (Sifted, error) {
	r := wire.Reader{B: b}
	s := Sifted{K: r.U8(), Z: r.Vec(), ZInt: r.Bytes(), X: r.Vec(), XInt: r.Bytes()}
	if err := r.Done(); err != nil {
		return Sifted{}, fmt.Errorf("%w: sifted: %w", steps.ErrInput, err)
	}
	if len(s.ZInt) != s.Z.N || len(s.XInt) != s.X.N {
		return Sifted{}, fmt.Errorf("%w: sifted: intensity list lengths", steps.ErrInput)
	}
	for _, k := range append(append([]uint8(nil), s.ZInt...), s.XInt...) {
		if k >= s.K {
			return Sifted{}, fmt.Errorf("%w: sifted: intensity %d ≥ K=%d", steps.ErrInput, k, s.K)
		}
	}
	return s, nil
}

type sift struct {
	role  steps.Role
	k     uint8
	in    Input
	state int
	m     steps.Metrics
}

// New creates a sift instance.
func New(role steps.Role, params, seed []byte) (steps.Step, error) {
	r := wire.Reader{B: params}
	k := r.U8()
	if err := r.Done(); err != nil || k == 0 {
		return nil, fmt.Errorf("%w: sift params: want u8 K > 0", steps.ErrParams)
	}
	if role != steps.Alice && role != steps.Bob {
		return nil, fmt.Errorf("%w: role %d", steps.ErrParams, role)
	}
	return &sift{role: role, k: k}, nil
}

func (s *sift) Step(in steps.Input) (steps.Result, error) {
	switch {
	case s.state == 0:
		if in.HasPeer {
			return steps.Result{}, fmt.Errorf("%w: sift: peer message before input", steps.ErrProtocol)
		}
		d, err := decodeInput(s.role, in.Data)
		if err != nil {
			return steps.Result{}, err
		}
		for _, x := range d.Intensity {
			if x >= s.k {
				return steps.Result{}, fmt.Errorf("%w: intensity %d ≥ K=%d", steps.ErrInput, x, s.k)
			}
		}
		s.in = d
		s.state = 1
		if s.role == steps.Bob {
			w := wire.Writer{}
			w.Vec(d.Bases)
			s.m.Rounds++
			return steps.Result{Msg: w.B, HasMsg: true, Metrics: s.m}, nil
		}
		return steps.Result{Metrics: s.m}, nil
	case s.state == 1 && in.HasPeer:
		s.m.Rounds++
		r := wire.Reader{B: in.Peer}
		if s.role == steps.Alice {
			bobBases := r.Vec()
			if err := r.Done(); err != nil || bobBases.N != s.in.Bits.N {
				return steps.Result{}, fmt.Errorf("%w: sift: Bob's bases: want %d, %v", steps.ErrProtocol, s.in.Bits.N, err)
			}
			w := wire.Writer{}
			w.Vec(s.in.Bases)
			w.Bytes(s.in.Intensity)
			s.m.Rounds++
			s.state = 2
			out := s.split(bobBases, s.in.Intensity)
			return steps.Result{Output: out.Encode(), Msg: w.B, HasMsg: true, Done: true, Metrics: s.m}, nil
		}
		aliceBases := r.Vec()
		ints := r.Bytes()
		if err := r.Done(); err != nil || aliceBases.N != s.in.Bits.N || len(ints) != s.in.Bits.N {
			return steps.Result{}, fmt.Errorf("%w: sift: Alice's answer: want %d, %v", steps.ErrProtocol, s.in.Bits.N, err)
		}
		for _, x := range ints {
			if x >= s.k {
				return steps.Result{}, fmt.Errorf("%w: sift: intensity %d ≥ K=%d", steps.ErrProtocol, x, s.k)
			}
		}
		s.state = 2
		out := s.split(aliceBases, ints)
		return steps.Result{Output: out.Encode(), Done: true, Metrics: s.m}, nil
	}
	return steps.Result{}, fmt.Errorf("%w: sift: unexpected call in state %d", steps.ErrProtocol, s.state)
}

// split keeps the positions where own and peer bases agree.
func (s *sift) split(peerBases bits.Vec, ints []uint8) Sifted {
	n := s.in.Bits.N
	var zb, xb []uint8
	var zi, xi []uint8
	for i := 0; i < n; i++ {
		b := s.in.Bases.Get(i)
		if b != peerBases.Get(i) {
			continue
		}
		if b == 0 {
			zb = append(zb, s.in.Bits.Get(i))
			zi = append(zi, ints[i])
		} else {
			xb = append(xb, s.in.Bits.Get(i))
			xi = append(xi, ints[i])
		}
	}
	if zi == nil {
		zi = []uint8{}
	}
	if xi == nil {
		xi = []uint8{}
	}
	return Sifted{K: s.k, Z: bits.FromBits(zb), ZInt: zi, X: bits.FromBits(xb), XInt: xi}
}
