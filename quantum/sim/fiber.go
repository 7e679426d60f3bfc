package sim

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
)

// Fiber is the channel in transit: it applies optical misalignment and the
// intercept-resend eavesdropper to photons crossing a Link. (Loss is applied
// where the photons are emitted, see the package comment.)
//
// Eavesdropper: each photon is intercepted with probability p. Eve measures
// in a uniformly random basis; if it is not the basis of the state in
// flight, her result is a uniformly random bit, and she resends a fresh
// state in her basis with her result. She resends into a lossless path, so
// Bob's click rate is unchanged and only the errors reveal her. Then
// misalignment flips the state's bit with probability e_d.
type Fiber struct {
	misalign float64
	seed     uint64
	eve      atomic.Uint64 // math.Float64bits of p
}

// NewFiber returns the fiber of model m (misalignment, initial Eve) with its
// own random stream derived from seed.
func NewFiber(m Model, seed uint64) (*Fiber, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	f := &Fiber{misalign: m.Misalignment, seed: seed}
	f.eve.Store(math.Float64bits(m.Eve))
	return f, nil
}

// SetEve sets the fraction p of pulses the eavesdropper intercepts, from the
// next frame on. p outside [0,1] is an error.
func (f *Fiber) SetEve(p float64) error {
	if !(p >= 0 && p <= 1) {
		return fmt.Errorf("%w: eavesdropper fraction %v", ErrInvalidModel, p)
	}
	f.eve.Store(math.Float64bits(p))
	return nil
}

// Eve returns the current intercepted fraction.
func (f *Fiber) Eve() float64 { return math.Float64frombits(f.eve.Load()) }

// Apply transforms the photons of fr in place. It is deterministic given
// the fiber's seed, the frame number and the current Eve setting.
func (f *Fiber) Apply(fr *TransitFrame) {
	p := f.Eve()
	if p == 0 && f.misalign == 0 {
		return
	}
	r := stream(f.seed, "fiber", fr.Frame)
	tEve, tMis := threshold32(p), threshold32(f.misalign)
	for i := range fr.Photons {
		ph := &fr.Photons[i]
		u := r.Uint64()
		if u&0xffffffff < tEve {
			ph.Intercepted = true
			eveBasis := uint8(u>>32) & 1
			if eveBasis != ph.Basis {
				ph.Basis = eveBasis
				ph.Bit = uint8(u>>33) & 1
			}
			u = r.Uint64()
		}
		if u>>32 < tMis {
			ph.Bit ^= 1
		}
	}
}

// OnSend returns a Link that applies the fiber to each frame as it is sent
// (use at Alice's end).
func (f *Fiber) OnSend(inner Link) Link { return fiberLink{f: f, inner: inner, onSend: true} }

// OnRecv returns a Link that applies the fiber to each frame as it is
// received (use at Bob's end).
func (f *Fiber) OnRecv(inner Link) Link { return fiberLink{f: f, inner: inner} }

type fiberLink struct {
	f      *Fiber
	inner  Link
	onSend bool
}

func (l fiberLink) SendFrame(ctx context.Context, fr *TransitFrame) error {
	if l.onSend {
		l.f.Apply(fr)
	}
	return l.inner.SendFrame(ctx, fr)
}

func (l fiberLink) RecvFrame(ctx context.Context) (*TransitFrame, error) {
	fr, err := l.inner.RecvFrame(ctx)
	if err == nil && !l.onSend {
		l.f.Apply(fr)
	}
	return fr, err
}
