package sim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"testing"

	"qkdkms/quantum"
)

// runFrame sends and receives one frame and joins Bob's detections with
// Alice's choices.
func runFrame(t testing.TB, s *Sim, frame, n uint64) (quantum.FrameStats, []quantum.Detection, []quantum.PulseRecord) {
	t.Helper()
	ctx := context.Background()
	st, err := s.Tx.Send(ctx, frame, n)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	det, err := s.Rx.Receive(ctx, frame, n)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	idx := make([]uint64, len(det))
	for i, d := range det {
		idx[i] = d.Index
	}
	ch, err := s.Tx.Choices(frame, idx)
	if err != nil {
		t.Fatalf("Choices: %v", err)
	}
	return st, det, ch
}

type tally struct {
	clicks, sifted, errors [4]float64
}

func count(det []quantum.Detection, ch []quantum.PulseRecord) tally {
	var ty tally
	for i, d := range det {
		k := ch[i].Intensity
		ty.clicks[k]++
		if ch[i].Basis == d.Basis {
			ty.sifted[k]++
			if ch[i].Bit != d.Bit {
				ty.errors[k]++
			}
		}
	}
	return ty
}

// within3σ checks a binomial count against its expectation.
func within3σ(t *testing.T, what string, got, trials, p float64) {
	t.Helper()
	mean := trials * p
	sd := math.Sqrt(trials * p * (1 - p))
	if math.Abs(got-mean) > 3*sd+1e-9 {
		t.Errorf("%s: got %.0f, expected %.1f ± %.1f (3σ = %.1f)", what, got, mean, sd, 3*sd)
	}
}

func TestGainAndQBERMatchModel(t *testing.T) {
	for _, km := range []float64{0, 25, 50, 100} {
		for _, seed := range []uint64{1, 2, 3} {
			t.Run(fmt.Sprintf("%gkm/seed%d", km, seed), func(t *testing.T) {
				m := DefaultModel()
				m.FiberKm = km
				// Scale the frame so each run sees ~10^5–10^6 clicks.
				n := uint64(math.Min(1e9, 2e7*math.Pow(10, m.LossDBPerKm*km/10)))
				if testing.Short() {
					n /= 10
				}
				s, err := New(m, seed)
				if err != nil {
					t.Fatal(err)
				}
				st, det, ch := runFrame(t, s, 1, n)
				ty := count(det, ch)
				var sum uint64
				for _, c := range st.PerIntensity {
					sum += c
				}
				if sum != n {
					t.Fatalf("PerIntensity sums to %d, want %d", sum, n)
				}
				for k := range m.Intensities {
					nk := float64(st.PerIntensity[k])
					within3σ(t, fmt.Sprintf("pulses of intensity %d", k), nk, float64(n), m.IntensityProbs[k])
					within3σ(t, fmt.Sprintf("clicks of intensity %d", k), ty.clicks[k], nk, m.ExpectedGain(k))
					within3σ(t, fmt.Sprintf("errors of intensity %d", k), ty.errors[k], ty.sifted[k], m.ExpectedQBER(k))
					t.Logf("k=%d gain %.4e (model %.4e) QBER %.4f (model %.4f) sifted %.0f",
						k, ty.clicks[k]/nk, m.ExpectedGain(k), ty.errors[k]/ty.sifted[k], m.ExpectedQBER(k), ty.sifted[k])
				}
				// Both parties pick Z with p_Z independently.
				var zz, bobZ float64
				for i, d := range det {
					if d.Basis == quantum.BasisZ {
						bobZ++
						if ch[i].Basis == quantum.BasisZ {
							zz++
						}
					}
				}
				within3σ(t, "Bob's Z choices", bobZ, float64(len(det)), m.PZ)
				within3σ(t, "Z-Z coincidences", zz, float64(len(det)), m.PZ*m.PZ)
			})
		}
	}
}

func TestInterceptResend(t *testing.T) {
	base := DefaultModel()
	base.FiberKm = 25
	const n = 2e8
	measure := func(p float64, seed uint64) (qber, sifted float64) {
		m := base
		m.Eve = p
		s, err := New(m, seed)
		if err != nil {
			t.Fatal(err)
		}
		_, det, ch := runFrame(t, s, 1, n)
		ty := count(det, ch)
		return ty.errors[0] / ty.sifted[0], ty.sifted[0]
	}
	q0, s0 := measure(0, 11)
	for _, p := range []float64{0.1, 0.25, 0.5, 1} {
		t.Run(fmt.Sprintf("p=%.2f", p), func(t *testing.T) {
			m := base
			m.Eve = p
			q, s := measure(p, 11)
			// Model: QBER(p) − QBER(0) = p(1/4 − e_d/2) for signal clicks
			// (dark counts dilute it by a negligible ~1e-4 at 25 km).
			want := p * (0.25 - base.Misalignment/2)
			sd := math.Sqrt(q*(1-q)/s + q0*(1-q0)/s0)
			if d := q - q0; math.Abs(d-want) > 3*sd+1e-4 {
				t.Errorf("added QBER %.5f, want %.5f (3σ %.5f)", d, want, 3*sd)
			}
			if math.Abs(q-m.ExpectedQBER(0)) > 3*math.Sqrt(q*(1-q)/s) {
				t.Errorf("QBER %.5f, model %.5f", q, m.ExpectedQBER(0))
			}
			t.Logf("p=%.2f QBER %.4f (no Eve %.4f), added %.4f ≈ p/4 = %.4f", p, q, q0, q-q0, p/4)
			if p == 1 && (q < 0.24 || q > 0.27) {
				t.Errorf("full intercept-resend QBER %.4f, want ≈ 25%%", q)
			}
		})
	}
}

func TestSetEveMidRun(t *testing.T) {
	m := DefaultModel()
	s, err := New(m, 5)
	if err != nil {
		t.Fatal(err)
	}
	qber := func(frame uint64) float64 {
		_, det, ch := runFrame(t, s, frame, 5e7)
		ty := count(det, ch)
		return ty.errors[0] / ty.sifted[0]
	}
	before := qber(1)
	if err := s.SetEve(1); err != nil {
		t.Fatal(err)
	}
	during := qber(2)
	if err := s.SetEve(0); err != nil {
		t.Fatal(err)
	}
	after := qber(3)
	t.Logf("QBER before %.4f, with Eve %.4f, after %.4f", before, during, after)
	if before > 0.02 || after > 0.02 || during < 0.24 {
		t.Errorf("QBER before %.4f / during %.4f / after %.4f", before, during, after)
	}
	if err := s.SetEve(1.5); !errors.Is(err, ErrInvalidModel) {
		t.Errorf("SetEve(1.5) = %v", err)
	}
}

func TestDeterministicBySeed(t *testing.T) {
	m := DefaultModel()
	m.Eve = 0.3
	run := func(seed uint64) ([]quantum.Detection, []quantum.PulseRecord, quantum.FrameStats) {
		s, err := New(m, seed)
		if err != nil {
			t.Fatal(err)
		}
		st, det, ch := runFrame(t, s, 9, 3e7)
		return det, ch, st
	}
	d1, c1, s1 := run(42)
	d2, c2, s2 := run(42)
	d3, _, _ := run(43)
	if !slices.Equal(d1, d2) || !slices.Equal(c1, c2) || !slices.Equal(s1.PerIntensity, s2.PerIntensity) {
		t.Fatal("same seed, different results")
	}
	if slices.Equal(d1, d3) {
		t.Fatal("different seeds, same detections")
	}
	t.Logf("%d detections, reproducible", len(d1))
}

// TestBackgroundSameFrame: a transmitter and receiver that simulate on one
// goroutine (behind a prefetcher) send and detect exactly what the parallel
// ones do.
func TestBackgroundSameFrame(t *testing.T) {
	m := DefaultModel()
	run := func(background bool) ([]Photon, []quantum.Detection) {
		link := &captureLink{}
		tx, err := NewTransmitter(m, 5, link)
		if err != nil {
			t.Fatal(err)
		}
		rx, err := NewReceiver(m, 6, link)
		if err != nil {
			t.Fatal(err)
		}
		if background {
			tx.Background()
			rx.Background()
		}
		const n = 3 * chunkPulses / 2 // two chunks
		if _, err := tx.Send(context.Background(), 1, n); err != nil {
			t.Fatal(err)
		}
		ph := link.frames[0].Photons
		det, err := rx.Receive(context.Background(), 1, n)
		if err != nil {
			t.Fatal(err)
		}
		return ph, det
	}
	p1, d1 := run(false)
	p2, d2 := run(true)
	if len(d1) == 0 || !slices.Equal(p1, p2) || !slices.Equal(d1, d2) {
		t.Fatalf("one goroutine: %d photons, %d detections; one per core: %d, %d", len(p2), len(d2), len(p1), len(d1))
	}
}

// captureLink records what crosses it.
type captureLink struct{ frames []*TransitFrame }

func (c *captureLink) SendFrame(_ context.Context, f *TransitFrame) error {
	c.frames = append(c.frames, f)
	return nil
}
func (c *captureLink) RecvFrame(context.Context) (*TransitFrame, error) {
	f := c.frames[0]
	c.frames = c.frames[1:]
	return f, nil
}

func TestChoicesConsistency(t *testing.T) {
	m := DefaultModel()
	m.FiberKm = 0
	link := &captureLink{}
	tx, err := NewTransmitter(m, 3, link) // no fiber: photons carry Alice's state
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 200000
	st, err := tx.Send(ctx, 7, n)
	if err != nil {
		t.Fatal(err)
	}
	tf := link.frames[0]
	// Every photon in transit carries Alice's choice for its pulse.
	idx := make([]uint64, len(tf.Photons))
	for i, p := range tf.Photons {
		idx[i] = p.Index
	}
	ch, err := tx.Choices(7, idx)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range tf.Photons {
		c := ch[i]
		if c.Index != p.Index || c.Bit != p.Bit || c.Basis != p.Basis || c.Intensity != p.Intensity {
			t.Fatalf("photon %+v but choice %+v", p, c)
		}
	}
	// Looking up every pulse reproduces PerIntensity exactly, and order of
	// lookup does not matter.
	all := make([]uint64, n)
	for i := range all {
		all[i] = uint64(n - 1 - i)
	}
	recs, err := tx.Choices(7, all)
	if err != nil {
		t.Fatal(err)
	}
	per := make([]uint64, len(m.Intensities))
	var z float64
	for _, r := range recs {
		per[r.Intensity]++
		if r.Basis == quantum.BasisZ {
			z++
		}
	}
	if !slices.Equal(per, st.PerIntensity) {
		t.Fatalf("intensity counts by lookup %v, FrameStats %v", per, st.PerIntensity)
	}
	// The choices Send recorded for emitted pulses are the ones computed
	// from the PRF and the permutation for any pulse.
	rec, buf := tx.frames[7], new(prfBuf)
	for _, r := range recs {
		bit, basis := tx.bitBasis(buf, 7, r.Index)
		if r.Bit != bit || r.Basis != basis || r.Intensity != rec.intensity(r.Index) {
			t.Fatalf("pulse %d: looked up %+v, computed bit %d basis %d intensity %d", r.Index, r, bit, basis, rec.intensity(r.Index))
		}
	}
	within3σ(t, "Alice's Z choices", z, n, m.PZ)
	// Photon-number class: the single-photon share of clicks per intensity.
	var singles, total [4]float64
	for _, p := range tf.Photons {
		total[p.Intensity]++
		if p.Photons == 1 {
			singles[p.Intensity]++
		}
	}
	for k := range m.Intensities {
		if total[k] > 100 {
			within3σ(t, fmt.Sprintf("single-photon clicks of intensity %d", k), singles[k], total[k], m.ExpectedSinglePhotonFraction(k))
		}
	}
	// Errors: unknown frame, index out of range, released frame.
	if _, err := tx.Choices(8, []uint64{0}); !errors.Is(err, ErrUnknownPulse) {
		t.Errorf("unknown frame: %v", err)
	}
	if _, err := tx.Choices(7, []uint64{n}); !errors.Is(err, ErrUnknownPulse) {
		t.Errorf("index beyond frame: %v", err)
	}
	if _, err := tx.Send(ctx, 7, 10); !errors.Is(err, ErrFrameInUse) {
		t.Errorf("resend of held frame: %v", err)
	}
	tx.Release(7)
	if _, err := tx.Choices(7, []uint64{0}); !errors.Is(err, ErrUnknownPulse) {
		t.Errorf("released frame: %v", err)
	}
}

func TestTransitCodec(t *testing.T) {
	m := DefaultModel()
	m.Eve = 0.5
	link := &captureLink{}
	f, _ := NewFiber(m, 1)
	tx, _ := NewTransmitter(m, 1, f.OnSend(link))
	if _, err := tx.Send(context.Background(), 3, 1e7); err != nil {
		t.Fatal(err)
	}
	orig := link.frames[0]
	b, err := orig.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back TransitFrame
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if back.Frame != orig.Frame || back.Pulses != orig.Pulses || !slices.Equal(back.Photons, orig.Photons) {
		t.Fatal("round trip changed the frame")
	}
	t.Logf("%d photons in %d bytes (%.2f B/photon)", len(orig.Photons), len(b), float64(len(b))/float64(len(orig.Photons)))
	// Streams of frames.
	var buf bytes.Buffer
	for range 3 {
		if err := WriteFrame(&buf, orig); err != nil {
			t.Fatal(err)
		}
	}
	br := bufio.NewReader(&buf)
	for i := range 3 {
		g, err := ReadFrame(br)
		if err != nil || len(g.Photons) != len(orig.Photons) {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	// Garbage and truncation are refused.
	bad := [][]byte{
		nil,
		{9},
		b[:len(b)/2],
		append(slices.Clone(b), 0),
		{1, 0, 5, 6},          // 6 photons for 5 pulses
		{1, 0, 5, 1, 7, 0},    // index 7 ≥ 5 pulses
		{1, 0, 5, 1, 0, 0x80}, // unknown flag
	}
	for i, d := range bad {
		var g TransitFrame
		if err := g.UnmarshalBinary(d); !errors.Is(err, ErrCodec) {
			t.Errorf("garbage %d: err = %v, want ErrCodec", i, err)
		}
	}
}

// Two "processes": Alice's half and the fiber on one side of a connection,
// Bob's half on the other, gives the same detections as in process.
func TestStreamLinkMatchesInProcess(t *testing.T) {
	m := DefaultModel()
	m.FiberKm = 50
	m.Eve = 0.2
	const seed, n = 77, 5e7
	s, _ := New(m, seed)
	_, want, _ := runFrame(t, s, 1, n)

	ca, cb := net.Pipe()
	defer ca.Close()
	defer cb.Close()
	fiber, _ := NewFiber(m, seed)
	tx, _ := NewTransmitter(m, seed, fiber.OnSend(NewStreamLink(ca)))
	rx, _ := NewReceiver(m, seed, NewStreamLink(cb))
	ctx := context.Background()
	errc := make(chan error, 1)
	go func() {
		_, err := tx.Send(ctx, 1, n)
		errc <- err
	}()
	got, err := rx.Receive(ctx, 1, n)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("over the stream: %d detections, in process: %d (or contents differ)", len(got), len(want))
	}
	// Wrong frame number is detected.
	go func() { _, _ = tx.Send(ctx, 2, 1000) }()
	if _, err := rx.Receive(ctx, 3, 1000); !errors.Is(err, ErrFrameMismatch) {
		t.Fatalf("mismatch: %v", err)
	}
	// Link loss surfaces as ErrLinkDown.
	ca.Close()
	if _, err := rx.Receive(ctx, 4, 1000); !errors.Is(err, quantum.ErrLinkDown) {
		t.Fatalf("after close: %v", err)
	}
}

func TestLocalLinkCloseAndContext(t *testing.T) {
	s, _ := New(DefaultModel(), 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Rx.Receive(ctx, 1, 10); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled receive: %v", err)
	}
	s.Close()
	if _, err := s.Tx.Send(context.Background(), 1, 10); !errors.Is(err, quantum.ErrLinkDown) {
		t.Fatalf("send on closed link: %v", err)
	}
	if _, err := s.Rx.Receive(context.Background(), 1, 10); !errors.Is(err, quantum.ErrLinkDown) {
		t.Fatalf("receive on closed link: %v", err)
	}
}

func TestBinomialSampler(t *testing.T) {
	r := stream(1, "test", 1)
	for _, c := range []struct {
		n uint64
		p float64
	}{{10, 0.3}, {1000, 0.01}, {1e6, 0.7}, {1e9, 0.2}} {
		const reps = 400
		var sum, sq float64
		for range reps {
			x := float64(binomial(r, c.n, c.p))
			sum += x
			sq += x * x
		}
		mean := sum / reps
		v := sq/reps - mean*mean
		wantM, wantV := float64(c.n)*c.p, float64(c.n)*c.p*(1-c.p)
		if math.Abs(mean-wantM) > 4*math.Sqrt(wantV/reps) {
			t.Errorf("Binomial(%d,%v) mean %.2f, want %.2f", c.n, c.p, mean, wantM)
		}
		if v < 0.7*wantV || v > 1.3*wantV {
			t.Errorf("Binomial(%d,%v) variance %.2f, want %.2f", c.n, c.p, v, wantV)
		}
	}
}

func TestInvalidModel(t *testing.T) {
	for name, mut := range map[string]func(*Model){
		"negative length": func(m *Model) { m.FiberKm = -1 },
		"efficiency":      func(m *Model) { m.DetectorEff = 0 },
		"probs":           func(m *Model) { m.IntensityProbs = []float64{0.5, 0.2, 0.2} },
		"pz":              func(m *Model) { m.PZ = 1 },
		"eve":             func(m *Model) { m.Eve = 2 },
		"lengths":         func(m *Model) { m.Intensities = m.Intensities[:2] },
	} {
		m := DefaultModel()
		mut(&m)
		if _, err := New(m, 1); !errors.Is(err, ErrInvalidModel) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

// BenchmarkSimFrame: one frame of 10^9 pulses at 50 km, Send + Receive.
func BenchmarkSimFrame(b *testing.B) {
	m := DefaultModel()
	m.FiberKm = 50
	s, err := New(m, 1)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const n = 1e9
	var dets int
	frame := uint64(0)
	for b.Loop() {
		frame++
		if _, err := s.Tx.Send(ctx, frame, n); err != nil {
			b.Fatal(err)
		}
		d, err := s.Rx.Receive(ctx, frame, n)
		if err != nil {
			b.Fatal(err)
		}
		s.Tx.Release(frame)
		dets += len(d)
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(dets)/sec, "detections/s")
	b.ReportMetric(float64(b.N)*n/sec, "pulses/s")
	b.ReportMetric(sec/float64(b.N), "s/frame")
}

func TestStreamLinkContextCancel(t *testing.T) {
	ca, cb := net.Pipe()
	defer ca.Close()
	defer cb.Close()
	l := NewStreamLink(cb)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := l.RecvFrame(ctx) // nothing ever arrives
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("RecvFrame after cancel: %v", err)
	}
}
