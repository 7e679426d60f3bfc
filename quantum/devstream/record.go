package devstream

import (
	"context"
	"errors"
	"fmt"
	"io"

	"qkdkms/quantum"
	"qkdkms/quantum/sim"
)

// Truth is what a recorded pair of streams says about one frame, computed
// from both sides' raw records (which only someone holding both has: a
// test, or a calibration run of real hardware).
type Truth struct {
	Frame      uint64 `json:"frame"`
	Pulses     uint64 `json:"pulses"`
	Detections int    `json:"detections"`
	Doubles    int    `json:"double_clicks"`
	// Z (key basis) and X (test basis) detections where Alice's and Bob's
	// bases agree, and the errors among them. Double clicks are left out
	// of the error counts (their bit is only decided by squashing).
	SiftedZ uint64 `json:"sifted_z"`
	ErrorsZ uint64 `json:"errors_z"`
	SiftedX uint64 `json:"sifted_x"`
	ErrorsX uint64 `json:"errors_x"`
}

// QBERZ is ErrorsZ / SiftedZ.
func (t Truth) QBERZ() float64 { return ratio(t.ErrorsZ, t.SiftedZ) }

// QBERX is ErrorsX / SiftedX.
func (t Truth) QBERX() float64 { return ratio(t.ErrorsX, t.SiftedX) }

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func truth(a *AliceFrame, b *BobFrame) Truth {
	t := Truth{Frame: a.Frame, Pulses: a.Pulses, Detections: len(b.Clicks)}
	for _, c := range b.Clicks {
		if c.Double {
			t.Doubles++
			continue
		}
		p := a.At(c.Index)
		if p.Basis != c.Basis {
			continue
		}
		e := uint64(p.Bit ^ c.Bit)
		if c.Basis == quantum.BasisZ {
			t.SiftedZ++
			t.ErrorsZ += e
		} else {
			t.SiftedX++
			t.ErrorsX += e
		}
	}
	return t
}

// Compare reads a recorded Alice stream and Bob stream to the end and
// returns the true sifted counts and errors of every frame. The two streams
// must hold the same frames.
func Compare(alice, bob io.Reader) ([]Truth, error) {
	da, err := NewDecoder(alice)
	if err != nil {
		return nil, fmt.Errorf("alice stream: %w", err)
	}
	db, err := NewDecoder(bob)
	if err != nil {
		return nil, fmt.Errorf("bob stream: %w", err)
	}
	var out []Truth
	for {
		fa, errA := da.ReadAlice()
		fb, errB := db.ReadBob()
		switch {
		case errors.Is(errA, io.EOF) && errors.Is(errB, io.EOF):
			return out, nil
		case errA != nil:
			return out, fmt.Errorf("alice stream: %w", eos(errA))
		case errB != nil:
			return out, fmt.Errorf("bob stream: %w", eos(errB))
		case fa.Frame != fb.Frame || fa.Pulses != fb.Pulses:
			return out, mismatch(RoleBob, fa.Frame, fa.Pulses, fb.Frame, fb.Pulses)
		}
		out = append(out, truth(fa, fb))
	}
}

// RecordOptions say what to record.
type RecordOptions struct {
	Model      sim.Model
	Seed       uint64 // seeds the simulated link
	FirstFrame uint64 // number of the first frame (default 1)
	Frames     int    // frames to record
	Pulses     uint64 // pulses per frame
	Device     string // device name in both headers (default "qkdkms sim")
}

// Record runs the simulator (quantum/sim) for o.Frames frames and writes
// what a real Alice and Bob device would export: Alice's choice for every
// pulse to alice, Bob's detections to bob. It returns the true statistics
// of each frame. The simulator squashes double clicks itself, so the Bob
// stream it records has no double-click flags.
func Record(ctx context.Context, o RecordOptions, alice, bob io.Writer) ([]Truth, error) {
	if o.Frames < 1 || o.Pulses == 0 {
		return nil, errors.New("devstream: record: need Frames ≥ 1 and Pulses > 0")
	}
	if o.FirstFrame == 0 {
		o.FirstFrame = 1
	}
	if o.Device == "" {
		o.Device = "qkdkms sim"
	}
	link, err := sim.New(o.Model, o.Seed)
	if err != nil {
		return nil, err
	}
	defer link.Close()
	h := Header{
		Intensities: o.Model.Intensities, IntensityProbs: o.Model.IntensityProbs,
		PulseRate: o.Model.PulseRate, Device: o.Device,
	}
	h.Role = RoleAlice
	wa, err := NewWriter(alice, h)
	if err != nil {
		return nil, err
	}
	h.Role = RoleBob
	wb, err := NewWriter(bob, h)
	if err != nil {
		return nil, err
	}
	var out []Truth
	var idx []uint64
	for i := range o.Frames {
		frame := o.FirstFrame + uint64(i)
		var fa *AliceFrame
		var fb *BobFrame
		fa, fb, idx, err = simFrame(ctx, link, frame, o.Pulses, idx)
		if err != nil {
			return out, fmt.Errorf("devstream: record: %w", err)
		}
		if err := wa.WriteAlice(fa); err != nil {
			return out, err
		}
		if err := wb.WriteBob(fb); err != nil {
			return out, err
		}
		out = append(out, truth(fa, fb))
	}
	return out, nil
}

// simFrame runs one frame through a simulated link and returns what Alice's
// and Bob's devices would record. idx is scratch space, returned for reuse.
func simFrame(ctx context.Context, link *sim.Sim, frame, pulses uint64, idx []uint64) (*AliceFrame, *BobFrame, []uint64, error) {
	if _, err := link.Tx.Send(ctx, frame, pulses); err != nil {
		return nil, nil, idx, err
	}
	defer link.Tx.Release(frame)
	dets, err := link.Rx.Receive(ctx, frame, pulses)
	if err != nil {
		return nil, nil, idx, err
	}
	fa := NewAliceFrame(frame, pulses)
	for lo := uint64(0); lo < pulses; lo += 1 << 16 {
		idx = idx[:0]
		for j := lo; j < min(lo+1<<16, pulses); j++ {
			idx = append(idx, j)
		}
		recs, err := link.Tx.Choices(frame, idx)
		if err != nil {
			return nil, nil, idx, err
		}
		for _, r := range recs {
			fa.Set(r.Index, r)
		}
	}
	fb := &BobFrame{Frame: frame, Pulses: pulses, Clicks: make([]Click, len(dets))}
	for j, d := range dets {
		fb.Clicks[j] = Click{Index: d.Index, Basis: d.Basis, Bit: d.Bit}
	}
	return fa, fb, idx, nil
}
