package sim

import (
	"context"
	"fmt"
	"sort"

	"qkdkms/quantum"
)

// Receiver is Bob's end of the simulated link: an active basis choice and
// two detectors with dark counts. It implements quantum.Receiver.
type Receiver struct {
	m    Model
	seed uint64
	prf  prf
	link Link

	thrZ     uint64
	darkAny  float64 // Y0: at least one detector dark-fires in a gate
	darkBoth float64 // P(both | at least one)
	invLog   float64
	// workers measure a frame's chunks (0: one per core); see Background.
	workers int
}

// NewReceiver returns Bob's end reading from link. seed keys his choices.
func NewReceiver(m Model, seed uint64, link Link) (*Receiver, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	r := &Receiver{m: m, seed: seed, prf: newPRF(seed, "bob"), link: link, thrZ: threshold32(m.PZ)}
	r.darkAny = m.Y0()
	if r.darkAny > 0 {
		r.darkBoth = m.DarkCount * m.DarkCount / r.darkAny
		r.invLog = invLogFor(r.darkAny)
	}
	return r, nil
}

// Background makes measuring run on one goroutine, as
// Transmitter.Background does for sending (quantum.PrefetchReceiver).
func (b *Receiver) Background() { b.workers = 1 }

// Receive takes the next frame off the link (it must be frame with n
// pulses), adds dark counts, measures, and returns the detections in index
// order. Double clicks are resolved to a random bit.
func (b *Receiver) Receive(ctx context.Context, frame uint64, n uint64) ([]quantum.Detection, error) {
	tf, err := b.link.RecvFrame(ctx)
	if err != nil {
		return nil, fmt.Errorf("sim: receive frame %d: %w", frame, err)
	}
	if tf.Frame != frame || tf.Pulses != n {
		return nil, fmt.Errorf("%w: expected frame %d of %d pulses, got frame %d of %d", ErrFrameMismatch, frame, n, tf.Frame, tf.Pulses)
	}
	return b.measure(ctx, tf)
}

// ReceiveNext takes whichever frame arrives next and measures it
// (quantum.NextReceiver, for prefetching).
func (b *Receiver) ReceiveNext(ctx context.Context) (frame, n uint64, dets []quantum.Detection, err error) {
	tf, err := b.link.RecvFrame(ctx)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("sim: receive frame: %w", err)
	}
	dets, err = b.measure(ctx, tf)
	return tf.Frame, tf.Pulses, dets, err
}

var _ quantum.NextReceiver = (*Receiver)(nil)

func (b *Receiver) measure(ctx context.Context, tf *TransitFrame) ([]quantum.Detection, error) {
	n := tf.Pulses
	if n == 0 {
		return nil, nil
	}
	parts := make([][]quantum.Detection, numChunks(n))
	err := forChunks(ctx, n, b.workers, func(c int, lo, hi uint64) {
		// The photons of this chunk: tf.Photons is sorted by index.
		from := sort.Search(len(tf.Photons), func(i int) bool { return tf.Photons[i].Index >= lo })
		to := sort.Search(len(tf.Photons), func(i int) bool { return tf.Photons[i].Index >= hi })
		parts[c] = b.measureRange(tf.Frame, uint64(c), lo, hi, tf.Photons[from:to])
	})
	if err != nil {
		return nil, err
	}
	total := 0
	for _, p := range parts {
		total += len(p)
	}
	out := make([]quantum.Detection, 0, total)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out, nil
}

// measureRange merges the photons of [lo, hi) with dark counts sampled by
// geometric gaps and measures each clicked pulse.
func (b *Receiver) measureRange(frame, chunk, lo, hi uint64, ph []Photon) []quantum.Detection {
	r := stream(b.seed, "bob", frame^chunk<<40)
	const none = ^uint64(0)
	nextDark := none
	if b.darkAny > 0 {
		if g := gap(r, b.invLog); g < hi-lo {
			nextDark = lo + g
		}
	}
	darkMask := func() uint8 {
		if r.Float64() < b.darkBoth {
			return 3
		}
		return 1 << (r.Uint64() & 1)
	}
	advanceDark := func() {
		g := gap(r, b.invLog)
		if g >= hi-nextDark-1 {
			nextDark = none
		} else {
			nextDark += 1 + g
		}
	}
	out := make([]quantum.Detection, 0, len(ph)+int(float64(hi-lo)*b.darkAny*1.1)+16)
	buf := new(prfBuf)
	for len(ph) > 0 || nextDark != none {
		var idx uint64
		var mask uint8
		var photon *Photon
		switch {
		case len(ph) > 0 && (nextDark == none || ph[0].Index < nextDark):
			idx, photon = ph[0].Index, &ph[0]
			ph = ph[1:]
		case len(ph) > 0 && ph[0].Index == nextDark:
			idx, photon = ph[0].Index, &ph[0]
			ph = ph[1:]
			mask = darkMask()
			advanceDark()
		default:
			idx = nextDark
			mask = darkMask()
			advanceDark()
		}
		lo, _ := b.prf.at(buf, frame, idx)
		basis := quantum.BasisX
		if (lo>>1)&0xffffffff < b.thrZ {
			basis = quantum.BasisZ
		}
		if photon != nil {
			det := photon.Bit
			if photon.Basis != basis {
				det = uint8(lo & 1) // wrong basis: either detector
			}
			mask |= 1 << det
		}
		var bit uint8
		switch mask {
		case 1:
			bit = 0
		case 2:
			bit = 1
		default: // double click: squash to a random bit
			bit = uint8(lo>>40) & 1
		}
		out = append(out, quantum.Detection{Index: idx, Basis: basis, Bit: bit})
	}
	return out
}

var _ quantum.Receiver = (*Receiver)(nil)
