package devstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"qkdkms/quantum"
)

// The "devstream" link driver: a device that exports raw records as QKDS
// streams (FORMAT.md), read per link connection from a recorded file or a
// live TCP or Unix socket the device's acquisition software serves. Alice's
// site (the site whose KME ID sorts first) reads an Alice stream, Bob's
// site a Bob stream.
func init() { quantum.Register("devstream", NewDriver) }

// Link driver defaults.
const (
	DefaultStallTimeout = 10 * time.Second
	DefaultMaxLagFrames = 16
)

// LinkOptions are the "devstream" driver's JSON options:
//
//	{"source": "tcp:qkd-alice.lab:7001", "stall_timeout": "5s", "max_lag_frames": 16}
//	{"source": "file:/var/lib/qkd/alice.qkds", "loop": true}
type LinkOptions struct {
	// Source is the device stream: "file:PATH" (a recorded capture, or a
	// FIFO), "tcp:HOST:PORT" or "unix:PATH" (a live stream: the node
	// connects as a client, once per link connection). Required.
	Source string `json:"source"`
	// Loop replays a file from its start when it ends, adding the file's
	// frame span (last − first + 1) to the frame numbers of each pass so
	// they keep increasing; both sites must loop files holding the same
	// frames. Files only.
	Loop bool `json:"loop,omitempty"`
	// StallTimeout is how long a session waits for the device's next
	// frame before it aborts with ErrStall (a Go duration, "5s"). Default
	// 10s.
	StallTimeout quantum.Duration `json:"stall_timeout,omitempty"`
	// MaxLagFrames is how many frames a live stream buffers ahead of the
	// sessions; when more arrive the oldest are dropped (counted as
	// skipped). Bob's site must still hold the frame Alice's site chose
	// when the session reaches it, so this is the tolerance between the
	// two sites' streams. A file is read on demand and never dropped.
	// Default 16.
	MaxLagFrames int `json:"max_lag_frames,omitempty"`
}

// Validate checks the options and fills in the defaults.
func (o *LinkOptions) Validate() error {
	if o.Source == "" {
		return errors.New("source is required (file:PATH, tcp:HOST:PORT or unix:PATH)")
	}
	src, err := parseSource(o.Source)
	if err != nil {
		return err
	}
	if o.Loop && src.live() {
		return fmt.Errorf("loop is for file sources, not %s", src.scheme)
	}
	switch {
	case o.StallTimeout == 0:
		o.StallTimeout = quantum.Duration(DefaultStallTimeout)
	case o.StallTimeout < 0:
		return fmt.Errorf("stall_timeout %v: must be positive", time.Duration(o.StallTimeout))
	}
	switch {
	case o.MaxLagFrames == 0:
		o.MaxLagFrames = DefaultMaxLagFrames
	case o.MaxLagFrames < 0:
		return fmt.Errorf("max_lag_frames %d: must be positive", o.MaxLagFrames)
	}
	return nil
}

// Stream errors (besides the format's: ErrCRC, ErrFrameOrder, ErrRole,
// ErrTruncated, ...). The driver returns them inside a *StreamError.
var (
	// ErrGap: Bob's stream is already past the frame the session asked
	// for (the device lost it, or dropped it as too old).
	ErrGap = errors.New("devstream: frame gap")
	// ErrStall: no frame arrived within the stall timeout.
	ErrStall = errors.New("devstream: stream stalled")
)

// StreamError is a failure of a link driver's device stream: which stream,
// which frame the session wanted (0 when none), and the cause (ErrGap,
// ErrStall, ErrCRC, ErrFrameOrder, ErrRole, ErrEndOfStream, ...).
type StreamError struct {
	Source string
	Role   Role
	Frame  uint64
	Err    error
}

func (e *StreamError) Error() string {
	if e.Frame != 0 {
		return fmt.Sprintf("devstream: %s stream %s: frame %d: %v", e.Role, e.Source, e.Frame, e.Err)
	}
	return fmt.Sprintf("devstream: %s stream %s: %v", e.Role, e.Source, e.Err)
}

func (e *StreamError) Unwrap() error { return e.Err }

// Driver is the "devstream" link driver of one peer. It holds no device
// until Source or Sink opens one for a link connection.
type Driver struct {
	o   LinkOptions
	src source
	log *slog.Logger

	mu sync.Mutex
	st linkStats
	f  *feed // the stream of the current connection, nil when none
}

type linkStats struct {
	role                     Role
	device                   string
	connected                bool
	position                 uint64 // last frame handed to a session
	read, skipped, delivered uint64
	loops, opens, errors     uint64
	lastErr                  string
	lastErrAt                time.Time
	failing                  bool // an error since the last frame delivered
}

var _ quantum.PhotonDriver = (*Driver)(nil)

// NewDriver builds a "devstream" driver from its JSON options (LinkOptions).
// It only validates them: the device is opened by Source and Sink.
func NewDriver(options json.RawMessage) (quantum.Driver, error) {
	var o LinkOptions
	if err := quantum.DecodeOptions(options, &o); err != nil {
		return nil, err
	}
	return NewLinkDriver(o)
}

// NewLinkDriver builds a driver from options.
func NewLinkDriver(o LinkOptions) (*Driver, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("devstream: %w", err)
	}
	src, _ := parseSource(o.Source)
	return &Driver{o: o, src: src, log: slog.Default()}, nil
}

// Options returns the driver's options with defaults filled in.
func (d *Driver) Options() LinkOptions { return d.o }

// Health reports the stream: where it is, how many frames it read, skipped
// and delivered, how far the sessions lag behind it, and the last error.
func (d *Driver) Health() quantum.Health {
	d.mu.Lock()
	defer d.mu.Unlock()
	lag := 0
	if d.f != nil {
		lag = d.f.buffered()
	}
	det := map[string]any{
		"source": d.src.String(), "connected": d.st.connected,
		"position": d.st.position, "frames_read": d.st.read, "frames_skipped": d.st.skipped,
		"frames_delivered": d.st.delivered, "lag_frames": lag, "stream_errors": d.st.errors,
		"opens": d.st.opens, "stall_timeout": time.Duration(d.o.StallTimeout).String(), "max_lag_frames": d.o.MaxLagFrames,
	}
	if d.st.role != 0 {
		det["role"] = d.st.role.String()
	}
	if d.st.device != "" {
		det["device"] = d.st.device
	}
	if d.o.Loop {
		det["loops"] = d.st.loops
	}
	if !d.st.lastErrAt.IsZero() {
		det["last_error_at"] = d.st.lastErrAt.UTC().Format(time.RFC3339)
	}
	return quantum.Health{Driver: "devstream", OK: !d.st.failing, LastError: d.st.lastErr, Details: det}
}

// Close closes the current stream, if any.
func (d *Driver) Close() error {
	d.mu.Lock()
	f := d.f
	d.f = nil
	d.st.connected = false
	d.mu.Unlock()
	if f != nil {
		f.close()
	}
	return nil
}

// note records a stream error in the health.
func (d *Driver) note(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.st.errors++
	d.st.lastErr = err.Error()
	d.st.lastErrAt = time.Now()
	d.st.failing = true
}

func (d *Driver) fail(role Role, frame uint64, err error) error {
	var se *StreamError
	if !errors.As(err, &se) {
		err = &StreamError{Source: d.src.String(), Role: role, Frame: frame, Err: err}
	}
	if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		d.note(err)
	}
	return err
}

// open opens the stream for a connection, reads its header and checks its
// role.
func (d *Driver) open(ctx context.Context, role Role) (*feed, error) {
	rc, err := d.dial(ctx)
	if err != nil {
		return nil, d.fail(role, 0, err)
	}
	f, err := newFeed(ctx, d, rc, role)
	if err != nil {
		_ = rc.Close()
		return nil, d.fail(role, 0, err)
	}
	d.mu.Lock()
	old := d.f
	d.f = f
	d.st.role, d.st.device, d.st.connected = role, f.h.Device, true
	d.st.opens++
	d.mu.Unlock()
	if old != nil {
		old.close()
	}
	return f, nil
}

func (d *Driver) dial(ctx context.Context) (io.ReadCloser, error) {
	if !d.src.live() {
		f, err := os.Open(d.src.addr)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", quantum.ErrLinkDown, err)
		}
		return f, nil
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, d.src.scheme, d.src.addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", quantum.ErrLinkDown, err)
	}
	return c, nil
}

func (d *Driver) release(f *feed) {
	d.mu.Lock()
	if d.f == f {
		d.f = nil
		d.st.connected = false
	}
	d.mu.Unlock()
	f.close()
}

// Source opens Alice's end: the Alice stream, for one link connection.
func (d *Driver) Source(ctx context.Context, env quantum.LinkEnv) (quantum.Source, error) {
	f, err := d.open(ctx, RoleAlice)
	if err != nil {
		return nil, err
	}
	return &Source{d: d, f: f, probs: append([]float64(nil), f.h.IntensityProbs...), sent: newSentFrames()}, nil
}

// Sink opens Bob's end: the Bob stream, for one link connection.
func (d *Driver) Sink(ctx context.Context, env quantum.LinkEnv) (quantum.Sink, error) {
	f, err := d.open(ctx, RoleBob)
	if err != nil {
		return nil, err
	}
	return &Sink{d: d, f: f, bits: bitSource{r: defaultRand()}}, nil
}

// Source is Alice's end of a devstream link (quantum.Source).
type Source struct {
	d     *Driver
	probs []float64
	sent  *sentFrames

	mu sync.Mutex
	f  *feed
}

// Header is the stream's header.
func (s *Source) Header() Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.h
}

// IntensityProbs are the header's intensity probabilities.
func (s *Source) IntensityProbs() []float64 { return s.probs }

// Next returns the frame the next session runs on: on a live stream the
// newest frame received (older buffered frames are skipped, the device
// does not wait for post-processing), on a file the next frame.
func (s *Source) Next(ctx context.Context) (frame, pulses uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, err := s.f.head(ctx, s.d.src.live())
	if err != nil {
		return 0, 0, s.d.fail(RoleAlice, 0, err)
	}
	return it.frame, it.pulses, nil
}

// Send takes the frame Next named off the stream. Any other frame is
// ErrFrameMismatch.
func (s *Source) Send(ctx context.Context, frame uint64, n uint64) (quantum.FrameStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, err := s.f.head(ctx, false)
	if err != nil {
		return quantum.FrameStats{}, s.d.fail(RoleAlice, frame, err)
	}
	if it.frame != frame || it.pulses != n {
		return quantum.FrameStats{}, s.d.fail(RoleAlice, frame, mismatch(RoleAlice, frame, n, it.frame, it.pulses))
	}
	s.f.pop(false)
	s.d.delivered(frame)
	a := it.a
	a.Frame = frame
	s.sent.put(a)
	h := s.f.h
	return quantum.FrameStats{
		Pulses: n, PerIntensity: a.PerIntensity(len(h.Intensities)),
		Intensities: append([]float64(nil), h.Intensities...), Seconds: float64(n) / h.PulseRate,
	}, nil
}

// Choices returns Alice's choices for pulses of a frame sent.
func (s *Source) Choices(frame uint64, indices []uint64) ([]quantum.PulseRecord, error) {
	return s.sent.choices(frame, indices)
}

// Release forgets a frame's choices.
func (s *Source) Release(frame uint64) { s.sent.release(frame) }

// Close closes the stream.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d.release(s.f)
	return nil
}

// Sink is Bob's end of a devstream link (quantum.Sink).
type Sink struct {
	d    *Driver
	bits bitSource

	mu sync.Mutex
	f  *feed
}

// Header is the stream's header.
func (s *Sink) Header() Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.h
}

// Receive returns the detections of frame frame: older frames on the
// stream are discarded (counted as skipped); a stream already past frame
// fails with ErrGap, no frame within the stall timeout with ErrStall. A
// live stream that failed (bad CRC, out-of-order frame, closed by the
// device) is reconnected by the next Receive.
func (s *Sink) Receive(ctx context.Context, frame uint64, n uint64) ([]quantum.Detection, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f.dead() && s.d.src.live() {
		f, err := s.d.open(ctx, RoleBob)
		if err != nil {
			return nil, err
		}
		s.f = f
	}
	for {
		it, err := s.f.head(ctx, false)
		if err != nil {
			return nil, s.d.fail(RoleBob, frame, err)
		}
		switch {
		case it.frame < frame:
			s.f.pop(true)
			continue
		case it.frame > frame:
			return nil, s.d.fail(RoleBob, frame, fmt.Errorf("%w: the stream is at frame %d", ErrGap, it.frame))
		case it.pulses != n:
			return nil, s.d.fail(RoleBob, frame, mismatch(RoleBob, frame, n, it.frame, it.pulses))
		}
		s.f.pop(false)
		s.d.delivered(frame)
		out := make([]quantum.Detection, len(it.b.Clicks))
		for i, c := range it.b.Clicks {
			bit := c.Bit
			if c.Double {
				if bit, err = s.bits.bit(); err != nil {
					return nil, s.d.fail(RoleBob, frame, fmt.Errorf("squashing: %w", err))
				}
			}
			out[i] = quantum.Detection{Index: c.Index, Basis: c.Basis, Bit: bit}
		}
		return out, nil
	}
}

// Close closes the stream.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d.release(s.f)
	return nil
}

func (d *Driver) delivered(frame uint64) {
	d.mu.Lock()
	d.st.position = frame
	d.st.delivered++
	d.st.failing = false
	d.mu.Unlock()
}

var (
	_ quantum.Source = (*Source)(nil)
	_ quantum.Sink   = (*Sink)(nil)
)
