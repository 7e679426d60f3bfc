package quantum

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
)

// A link driver is a QKD link's hardware (or its simulation), one per link
// and site, chosen by name in the node configuration (`links[].driver`,
// node/CONFIG.md) and built from that link's JSON options. Two kinds
// exist (quantum/DRIVERS.md is the vendor's guide):
//
//   - PhotonDriver: the device gives raw pulse records (Alice's choices,
//     Bob's detections) and the site runs BB84 post-processing on them
//     (the simulator "sim", recorded or live device streams "devstream").
//   - KeyDevice: the device post-processes itself and delivers finished
//     keys, e.g. over ETSI GS QKD 014 ("etsi014").
//
// A driver package registers itself in an init function; the node links it
// in with one blank import (node/links.go).

// Driver is what every link driver provides.
type Driver interface {
	// Health is the driver's own view of its device, for `qkdkms link
	// status` and the metrics.
	Health() Health
	// Close releases the device.
	Close() error
}

// Health is a driver's state.
type Health struct {
	Driver    string `json:"driver"`
	OK        bool   `json:"ok"`
	LastError string `json:"last_error,omitempty"`
	// Details are driver-specific figures (stream position and lag,
	// device address and reachability, model parameters).
	Details map[string]any `json:"details,omitempty"`
}

// LinkEnv is what a link gives its driver when a connection to the peer
// site starts.
type LinkEnv struct {
	// Transport carries opaque frames from Alice's end to Bob's end over
	// the link's connection, in order: drivers that simulate photons in
	// transit use it; hardware drivers have their own quantum channel.
	Transport FrameTransport
	// BlockBits is the sifted key block a session aims for.
	BlockBits int
	// Seed seeds any randomness a simulation needs (fresh per connection).
	Seed   uint64
	Logger *slog.Logger
}

// FrameTransport carries frames between the two ends of a link.
type FrameTransport interface {
	SendFrame(ctx context.Context, b []byte) error
	RecvFrame(ctx context.Context) ([]byte, error)
}

// Source is Alice's end as a live link drives it.
type Source interface {
	Transmitter
	// Next is the frame the next session runs and its pulse count: the
	// device's next frame, or the simulator's next number. The session
	// sends both to Bob, whose Sink must deliver that frame or fail.
	Next(ctx context.Context) (frame, pulses uint64, err error)
	// IntensityProbs are the source's design probabilities of its
	// intensities (the decoy-state estimate needs them).
	IntensityProbs() []float64
	Close() error
}

// Sink is Bob's end as a live link drives it.
type Sink interface {
	Receiver
	Close() error
}

// PhotonDriver is a link whose raw pulse records the site post-processes.
type PhotonDriver interface {
	Driver
	// Source opens Alice's end for one connection to the peer site.
	Source(ctx context.Context, env LinkEnv) (Source, error)
	// Sink opens Bob's end for one connection to the peer site.
	Sink(ctx context.Context, env LinkEnv) (Sink, error)
}

// KeyDevice is a link whose device delivers finished keys.
type KeyDevice interface {
	Driver
	// KeyBytes is the size of the device's keys in bytes: Draw's n is a
	// multiple of it.
	KeyBytes() int
	// Draw takes n bytes of fresh key from this site's device and returns
	// the IDs under which the peer site's device hands out the same key.
	Draw(ctx context.Context, n int) (ids []string, key []byte, err error)
	// Fetch returns the key the peer's device gave out under ids.
	Fetch(ctx context.Context, ids []string) ([]byte, error)
}

// Factory builds a driver from a link's options (nil or a JSON object).
// It must refuse unknown options and out-of-range values with a clear
// error, and fill in documented defaults.
type Factory func(options json.RawMessage) (Driver, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Factory{}
)

// ErrUnknownDriver: no driver is registered under the name.
var ErrUnknownDriver = errors.New("quantum: unknown link driver")

// Register makes a driver available by name. It panics on an empty name or
// a second registration (a programming error, found at start-up).
func Register(name string, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if name == "" || f == nil {
		panic("quantum: Register needs a name and a factory")
	}
	if _, dup := registry[name]; dup {
		panic("quantum: link driver " + name + " registered twice")
	}
	registry[name] = f
}

// Open builds the named driver from its options.
func Open(name string, options json.RawMessage) (Driver, error) {
	registryMu.RLock()
	f, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %v)", ErrUnknownDriver, name, Drivers())
	}
	d, err := f(options)
	if err != nil {
		return nil, fmt.Errorf("quantum: driver %s: %w", name, err)
	}
	switch d.(type) {
	case PhotonDriver, KeyDevice:
		return d, nil
	default:
		_ = d.Close()
		return nil, fmt.Errorf("quantum: driver %s is neither a PhotonDriver nor a KeyDevice", name)
	}
}

// Drivers lists the registered driver names.
func Drivers() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// DecodeOptions decodes a driver's options strictly into v: unknown
// members are an error, absent or null options leave v as it is.
func DecodeOptions(options json.RawMessage, v any) error {
	if len(options) == 0 || string(options) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(options))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("options: %w", err)
	}
	if dec.More() {
		return errors.New("options: trailing data after the JSON object")
	}
	return nil
}
