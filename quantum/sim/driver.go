package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"

	"qkdkms/quantum"
)

// The "sim" link driver: this package's channel model with per-link
// parameters, photons simulated in transit over the link's own connection
// (quantum.LinkEnv.Transport). Options are the model's fields
// (node/CONFIG.md, "Link drivers"); absent ones keep DefaultModel's values.
func init() { quantum.Register("sim", NewDriver) }

// Options are the "sim" driver's options.
type Options struct {
	FiberKm        float64   `json:"fiber_km"`
	LossDBPerKm    float64   `json:"loss_db_per_km"`
	DetectorEff    float64   `json:"detector_efficiency"`
	DarkCount      float64   `json:"dark_count"`
	Misalignment   float64   `json:"misalignment"`
	PulseRate      float64   `json:"pulse_rate_hz"`
	Intensities    []float64 `json:"intensities"`
	IntensityProbs []float64 `json:"intensity_probs"`
	PZ             float64   `json:"p_z"`
	Eve            float64   `json:"eve"`
}

// OptionsOf returns the options that describe m.
func OptionsOf(m Model) Options {
	return Options{FiberKm: m.FiberKm, LossDBPerKm: m.LossDBPerKm, DetectorEff: m.DetectorEff, DarkCount: m.DarkCount,
		Misalignment: m.Misalignment, PulseRate: m.PulseRate, Intensities: m.Intensities, IntensityProbs: m.IntensityProbs,
		PZ: m.PZ, Eve: m.Eve}
}

// Model is the channel model the options describe.
func (o Options) Model() Model {
	return Model{FiberKm: o.FiberKm, LossDBPerKm: o.LossDBPerKm, DetectorEff: o.DetectorEff, DarkCount: o.DarkCount,
		Misalignment: o.Misalignment, PulseRate: o.PulseRate, Intensities: o.Intensities, IntensityProbs: o.IntensityProbs,
		PZ: o.PZ, Eve: o.Eve}
}

// Driver is the simulated link of one peer.
type Driver struct {
	model Model

	mu    sync.Mutex
	eve   float64
	fiber *Fiber // the fiber of the current connection (Alice's side)
	err   string
}

var _ quantum.PhotonDriver = (*Driver)(nil)

// NewDriver builds a "sim" driver from its JSON options.
func NewDriver(options json.RawMessage) (quantum.Driver, error) {
	o := OptionsOf(DefaultModel())
	if err := quantum.DecodeOptions(options, &o); err != nil {
		return nil, err
	}
	return NewModelDriver(o.Model())
}

// NewModelDriver builds a "sim" driver for a model.
func NewModelDriver(m Model) (*Driver, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &Driver{model: m, eve: m.Eve}, nil
}

// Model is the driver's channel model.
func (d *Driver) Model() Model { return d.model }

// SetEve sets the fraction of pulses an intercept-resend eavesdropper
// attacks, now and on later connections (the fiber runs at Alice's site).
func (d *Driver) SetEve(p float64) error {
	if p < 0 || p > 1 || math.IsNaN(p) {
		return fmt.Errorf("sim: eavesdropper fraction %v outside [0,1]", p)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.eve = p
	if d.fiber != nil {
		return d.fiber.SetEve(p)
	}
	return nil
}

// Eve is the eavesdropper fraction set.
func (d *Driver) Eve() float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.eve
}

// Health reports the model (a simulation has no device to lose).
func (d *Driver) Health() quantum.Health {
	d.mu.Lock()
	defer d.mu.Unlock()
	return quantum.Health{Driver: "sim", OK: d.err == "", LastError: d.err, Details: map[string]any{
		"fiber_km": d.model.FiberKm, "detector_efficiency": d.model.DetectorEff, "dark_count": d.model.DarkCount,
		"misalignment": d.model.Misalignment, "pulse_rate_hz": d.model.PulseRate, "eve": d.eve,
	}}
}

// Close has nothing to release.
func (d *Driver) Close() error { return nil }

// Source runs Alice's source and the fiber (with the eavesdropper) for one
// connection; frame f+1 crosses the link while frame f is post-processed,
// on one core, so that the session's round trips find the other free.
func (d *Driver) Source(ctx context.Context, env quantum.LinkEnv) (quantum.Source, error) {
	fiber, err := NewFiber(d.model, env.Seed)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	err = fiber.SetEve(d.eve)
	d.fiber = fiber
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	tx, err := NewTransmitter(d.model, env.Seed^0x9e3779b97f4a7c15, fiber.OnSend(transportLink{env.Transport}))
	if err != nil {
		return nil, err
	}
	tx.Background()
	return &source{PrefetchTransmitter: quantum.NewPrefetchTransmitter(tx), pulses: d.model.PulsesFor(env.BlockBits),
		probs: d.model.IntensityProbs}, nil
}

// Sink runs Bob's detectors for one connection, measuring frame f+1 while
// frame f is post-processed.
func (d *Driver) Sink(ctx context.Context, env quantum.LinkEnv) (quantum.Sink, error) {
	rx, err := NewReceiver(d.model, env.Seed, transportLink{env.Transport})
	if err != nil {
		return nil, err
	}
	rx.Background()
	return quantum.NewPrefetchReceiver(rx), nil
}

type source struct {
	*quantum.PrefetchTransmitter
	frame  uint64
	pulses uint64
	probs  []float64
}

func (s *source) Next(context.Context) (uint64, uint64, error) {
	s.frame++
	return s.frame, s.pulses, nil
}

func (s *source) IntensityProbs() []float64 { return s.probs }

// transportLink carries transit frames over a link's frame transport.
type transportLink struct{ t quantum.FrameTransport }

func (l transportLink) SendFrame(ctx context.Context, f *TransitFrame) error {
	b, err := f.MarshalBinary()
	if err != nil {
		return fmt.Errorf("sim: encode transit frame: %w", err)
	}
	return l.t.SendFrame(ctx, b)
}

func (l transportLink) RecvFrame(ctx context.Context) (*TransitFrame, error) {
	b, err := l.t.RecvFrame(ctx)
	if err != nil {
		return nil, err
	}
	f := new(TransitFrame)
	if err := f.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("sim: decode transit frame: %w", err)
	}
	return f, nil
}
