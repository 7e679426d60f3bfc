package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"

	"qkdkms/quantum"
)

var (
	// ErrUnknownPulse: Choices was asked about a frame or index not sent.
	ErrUnknownPulse = errors.New("sim: pulse not sent")
	// ErrFrameInUse: Send was called for a frame still held (not released).
	ErrFrameInUse = errors.New("sim: frame already sent and not released")
	// ErrFrameMismatch: the receiver got a different frame than it expected.
	ErrFrameMismatch = errors.New("sim: frame mismatch")
)

// Transmitter is Alice's end of the simulated link. It implements
// quantum.Transmitter.
type Transmitter struct {
	m    Model
	seed uint64
	prf  prf
	link Link

	thrZ   uint64    // basis threshold
	s      []float64 // per intensity: a photon is registered, 1 − e^{−ημ}
	single []float64 // per intensity: P(single-photon pulse | registered)
	smax   float64
	invLog float64

	// workers simulate a frame's chunks (0: one per core); see Background.
	workers int

	mu     sync.Mutex
	frames map[uint64]*frameRecord
}

type frameRecord struct {
	n    uint64
	cum  []uint64 // cumulative intensity counts
	perm permutation
	// emitted holds Alice's choices at the pulses whose light left for Bob
	// (increasing index), recorded by Send before the fiber acts, so that
	// Choices finds most detections here instead of recomputing the PRF
	// and the permutation; other pulses (dark counts) are computed.
	emitted []uint64
	choice  []uint8 // per emitted pulse: bit | basis<<1 | intensity<<2
}

// NewTransmitter returns Alice's end sending into link (usually wrapped by
// Fiber.OnSend). seed keys her choices.
func NewTransmitter(m Model, seed uint64, link Link) (*Transmitter, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	t := &Transmitter{
		m: m, seed: seed, prf: newPRF(seed, "alice"), link: link,
		thrZ:   threshold32(m.PZ),
		frames: make(map[uint64]*frameRecord),
	}
	for k := range m.Intensities {
		s := m.signalProb(k)
		t.s = append(t.s, s)
		t.single = append(t.single, m.ExpectedSinglePhotonFraction(k))
		t.smax = math.Max(t.smax, s)
	}
	t.invLog = invLogFor(t.smax)
	return t, nil
}

// Background makes Send simulate on one goroutine: for a transmitter that
// sends the next frame while a session runs (quantum.PrefetchTransmitter),
// so the session's round trips find a free core instead of waiting behind
// the simulation. A frame's photons do not depend on it.
func (t *Transmitter) Background() { t.workers = 1 }

// Model returns the transmitter's model.
func (t *Transmitter) Model() Model { return t.m }

func (t *Transmitter) newRecord(frame, n uint64) *frameRecord {
	r := stream(t.seed, "alice", frame)
	counts := multinomial(r, n, t.m.IntensityProbs)
	rec := &frameRecord{n: n, cum: make([]uint64, len(counts)), perm: newPermutation(n, r)}
	var c uint64
	for k, v := range counts {
		c += v
		rec.cum[k] = c
	}
	return rec
}

func (rec *frameRecord) intensity(i uint64) uint8 {
	y := rec.perm.at(i)
	for k, c := range rec.cum {
		if y < c {
			return uint8(k)
		}
	}
	return uint8(len(rec.cum) - 1)
}

func (t *Transmitter) bitBasis(buf *prfBuf, frame, i uint64) (bit, basis uint8) {
	lo, _ := t.prf.at(buf, frame, i)
	bit = uint8(lo & 1)
	basis = quantum.BasisX
	if (lo>>1)&0xffffffff < t.thrZ {
		basis = quantum.BasisZ
	}
	return bit, basis
}

// Send emits frame of n pulses: it draws the photons that reach Bob and
// sends them over the link. The frame's choices stay available to Choices
// until Release.
func (t *Transmitter) Send(ctx context.Context, frame uint64, n uint64) (quantum.FrameStats, error) {
	if err := ctx.Err(); err != nil {
		return quantum.FrameStats{}, err
	}
	t.mu.Lock()
	if _, ok := t.frames[frame]; ok {
		t.mu.Unlock()
		return quantum.FrameStats{}, fmt.Errorf("%w: frame %d", ErrFrameInUse, frame)
	}
	rec := t.newRecord(frame, n)
	t.frames[frame] = rec
	t.mu.Unlock()

	tf, err := t.emit(ctx, frame, rec)
	if err == nil {
		err = t.link.SendFrame(ctx, tf)
	}
	if err != nil {
		t.Release(frame)
		return quantum.FrameStats{}, fmt.Errorf("sim: send frame %d: %w", frame, err)
	}
	st := quantum.FrameStats{
		Pulses:       n,
		PerIntensity: make([]uint64, len(rec.cum)),
		Intensities:  append([]float64(nil), t.m.Intensities...),
		Seconds:      t.m.Seconds(n),
	}
	prev := uint64(0)
	for k, c := range rec.cum {
		st.PerIntensity[k] = c - prev
		prev = c
	}
	return st, nil
}

// emit walks the frame with geometric gaps at the largest per-pulse photon
// registration probability and thins by intensity, in parallel chunks.
func (t *Transmitter) emit(ctx context.Context, frame uint64, rec *frameRecord) (*TransitFrame, error) {
	n := rec.n
	tf := &TransitFrame{Frame: frame, Pulses: n}
	if n == 0 || t.smax == 0 {
		return tf, nil
	}
	parts := make([][]Photon, numChunks(n))
	err := forChunks(ctx, n, t.workers, func(c int, lo, hi uint64) {
		parts[c] = t.emitRange(frame, rec, uint64(c), lo, hi)
	})
	if err != nil {
		return nil, err
	}
	total := 0
	for _, p := range parts {
		total += len(p)
	}
	tf.Photons = make([]Photon, 0, total)
	rec.emitted = make([]uint64, 0, total)
	rec.choice = make([]uint8, 0, total)
	for _, p := range parts {
		tf.Photons = append(tf.Photons, p...)
		for _, ph := range p {
			rec.emitted = append(rec.emitted, ph.Index)
			rec.choice = append(rec.choice, ph.Bit|ph.Basis<<1|ph.Intensity<<2)
		}
	}
	return tf, nil
}

func (t *Transmitter) emitRange(frame uint64, rec *frameRecord, chunk, lo, hi uint64) []Photon {
	expect := 0.0
	for k, p := range t.m.IntensityProbs {
		expect += p * t.s[k]
	}
	out := make([]Photon, 0, int(float64(hi-lo)*expect*1.02)+64)
	r := stream(t.seed, "emit", frame^chunk<<40)
	buf := new(prfBuf)
	i := lo + gap(r, t.invLog)
	if i < lo { // overflow
		return out
	}
	for i < hi {
		k := rec.intensity(i)
		if t.s[k] == t.smax || r.Float64()*t.smax < t.s[k] {
			bit, basis := t.bitBasis(buf, frame, i)
			ph := Photon{Index: i, Bit: bit, Basis: basis, Intensity: k, Photons: 2}
			if r.Float64() < t.single[k] {
				ph.Photons = 1
			}
			out = append(out, ph)
		}
		g := gap(r, t.invLog)
		if g >= hi-i-1 {
			break
		}
		i += 1 + g
	}
	return out
}

// Choices returns Alice's choices for the given pulses of a sent frame.
func (t *Transmitter) Choices(frame uint64, indices []uint64) ([]quantum.PulseRecord, error) {
	t.mu.Lock()
	rec, ok := t.frames[frame]
	t.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: frame %d", ErrUnknownPulse, frame)
	}
	out := make([]quantum.PulseRecord, len(indices))
	buf := new(prfBuf)
	k := 0 // the first emitted pulse not below the previous index
	for j, i := range indices {
		if i >= rec.n {
			return nil, fmt.Errorf("%w: frame %d index %d ≥ %d", ErrUnknownPulse, frame, i, rec.n)
		}
		if j > 0 && i < indices[j-1] { // out of order: search again
			k, _ = slices.BinarySearch(rec.emitted, i)
		}
		for k < len(rec.emitted) && rec.emitted[k] < i {
			k++
		}
		if k < len(rec.emitted) && rec.emitted[k] == i {
			c := rec.choice[k]
			out[j] = quantum.PulseRecord{Index: i, Bit: c & 1, Basis: c >> 1 & 1, Intensity: c >> 2}
			continue
		}
		bit, basis := t.bitBasis(buf, frame, i)
		out[j] = quantum.PulseRecord{Index: i, Bit: bit, Basis: basis, Intensity: rec.intensity(i)}
	}
	return out, nil
}

// Release forgets a frame.
func (t *Transmitter) Release(frame uint64) {
	t.mu.Lock()
	delete(t.frames, frame)
	t.mu.Unlock()
}

var _ quantum.Transmitter = (*Transmitter)(nil)
