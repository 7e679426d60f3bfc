package devstream

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"qkdkms/quantum"
)

// Options configure a driver.
type Options struct {
	// Rand supplies the random bits that squash Bob's double clicks
	// (Receiver only). Default crypto/rand.
	Rand io.Reader
	// Logger gets one debug line per frame. Default slog.Default().
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// deadliner is implemented by net.Conn and by os.File on pollable files
// (pipes, sockets, character devices).
type deadliner interface {
	SetReadDeadline(time.Time) error
}

// stream is a Decoder whose reads honour a context. A read runs on its own
// goroutine; when ctx ends first, the call returns ctx's error at once, the
// stream is marked broken (its position within a record is lost), and the
// goroutine stays blocked in the reader's Read until the reader returns —
// which the caller ensures by closing the reader. Readers with
// SetReadDeadline (net.Conn, pipes and character devices opened with
// os.OpenFile) are interrupted by a past deadline instead.
type stream struct {
	r      io.Reader
	mu     sync.Mutex
	dec    *Decoder
	broken error
	// next holds a record read but not yet consumed (after a mismatch).
	nextA *AliceFrame
	nextB *BobFrame
}

func (s *stream) run(ctx context.Context, fn func() error) error {
	if s.broken != nil {
		return s.broken
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("devstream: %w", err)
	}
	if ctx.Done() == nil {
		return s.fail(fn())
	}
	done := make(chan error, 1)
	go func() { done <- fn() }()
	stop := func() bool { return true }
	fired := make(chan struct{})
	d, canDeadline := s.r.(deadliner)
	if canDeadline {
		stop = context.AfterFunc(ctx, func() {
			_ = d.SetReadDeadline(time.Unix(1, 0))
			close(fired)
		})
	}
	select {
	case err := <-done:
		if stop() {
			return s.fail(err)
		}
		// ctx ended as the read returned and a past deadline was set
		<-fired
		if err == nil {
			_ = d.SetReadDeadline(time.Time{})
			return nil
		}
		s.broken = fmt.Errorf("%w (%v)", ErrBroken, ctx.Err())
		return fmt.Errorf("devstream: %w", ctx.Err())
	case <-ctx.Done():
		select {
		case err := <-done:
			if err == nil && stop() {
				return nil
			}
		default:
		}
		s.broken = fmt.Errorf("%w (%v); close the reader to release it", ErrBroken, ctx.Err())
		return fmt.Errorf("devstream: %w", ctx.Err())
	}
}

// fail marks the stream broken after any error but a clean end of stream
// or a frame mismatch (which consume nothing).
func (s *stream) fail(err error) error {
	if err != nil && !errors.Is(err, ErrEndOfStream) && !errors.Is(err, ErrFrameMismatch) {
		s.broken = fmt.Errorf("%w: %w", ErrBroken, err)
	}
	return err
}

func newStream(ctx context.Context, r io.Reader) (*stream, error) {
	s := &stream{r: r}
	err := s.run(ctx, func() error {
		d, err := NewDecoder(r)
		s.dec = d
		return err
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func mismatch(role Role, frame, n, gotFrame, gotN uint64) error {
	return fmt.Errorf("%w: the session asked for frame %d of %d pulses, the %s device stream holds frame %d of %d pulses next", ErrFrameMismatch, frame, n, role, gotFrame, gotN)
}

func eos(err error) error {
	if errors.Is(err, io.EOF) {
		return ErrEndOfStream
	}
	return err
}

// Transmitter is Alice's end of a real device: it reads Alice's frame
// records (her choice for every pulse, as her device logged its QRNG
// output) from a device stream. It implements quantum.Transmitter.
//
// Send does not drive the hardware: the device runs on its own, and Send
// takes its next frame record off the stream, which must be the frame the
// session asks for (Next tells which that is). Choices answers from the
// frame read, until Release.
type Transmitter struct {
	s   *stream
	h   Header
	log *slog.Logger

	mu     sync.Mutex
	frames map[uint64]*AliceFrame
}

// NewTransmitter reads the stream header from r (an Alice stream) and
// returns the transmitter. Reads honour ctx as described on Send; the
// caller owns r and must close it to release a read blocked in the device.
func NewTransmitter(ctx context.Context, r io.Reader, o Options) (*Transmitter, error) {
	o.defaults()
	s, err := newStream(ctx, r)
	if err != nil {
		return nil, err
	}
	if h := s.dec.Header(); h.Role != RoleAlice {
		return nil, fmt.Errorf("%w: NewTransmitter needs an alice stream, got %s", ErrRole, h.Role)
	}
	return &Transmitter{s: s, h: s.dec.Header(), log: o.Logger, frames: map[uint64]*AliceFrame{}}, nil
}

// Header returns the device stream's header.
func (t *Transmitter) Header() Header { return t.h }

// peek reads the next record into s.nextA unless one is pending.
func (t *Transmitter) peek(ctx context.Context) (*AliceFrame, error) {
	if t.s.broken != nil {
		return nil, t.s.broken
	}
	if t.s.nextA != nil {
		return t.s.nextA, nil
	}
	err := t.s.run(ctx, func() error {
		f, err := t.s.dec.ReadAlice()
		if err != nil {
			return eos(err)
		}
		t.s.nextA = f
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t.s.nextA, nil
}

// Next reads (without consuming) the next frame record and returns its
// frame number and pulse count: what the next Send must ask for.
func (t *Transmitter) Next(ctx context.Context) (frame, pulses uint64, err error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	f, err := t.peek(ctx)
	if err != nil {
		return 0, 0, err
	}
	return f.Frame, f.Pulses, nil
}

// Send takes the next frame record off the device stream; it must be frame
// frame of n pulses (else ErrFrameMismatch, and the record stays next).
// When ctx ends during a blocking read, Send returns ctx's error at once
// and the transmitter is broken (ErrBroken) from then on.
func (t *Transmitter) Send(ctx context.Context, frame uint64, n uint64) (quantum.FrameStats, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	f, err := t.peek(ctx)
	if err != nil {
		return quantum.FrameStats{}, fmt.Errorf("devstream: send frame %d: %w", frame, err)
	}
	if f.Frame != frame || f.Pulses != n {
		return quantum.FrameStats{}, mismatch(RoleAlice, frame, n, f.Frame, f.Pulses)
	}
	t.s.nextA = nil
	t.mu.Lock()
	t.frames[frame] = f
	t.mu.Unlock()
	st := quantum.FrameStats{
		Pulses:       n,
		PerIntensity: f.PerIntensity(len(t.h.Intensities)),
		Intensities:  append([]float64(nil), t.h.Intensities...),
		Seconds:      float64(n) / t.h.PulseRate,
	}
	t.log.Debug("devstream frame sent", "role", "alice", "frame", frame, "pulses", n)
	return st, nil
}

// Choices returns Alice's choices for the given pulses of a frame sent and
// not released.
func (t *Transmitter) Choices(frame uint64, indices []uint64) ([]quantum.PulseRecord, error) {
	t.mu.Lock()
	f, ok := t.frames[frame]
	t.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: frame %d", ErrUnknownPulse, frame)
	}
	return frameChoices(f, frame, indices)
}

// Release forgets a frame's choices.
func (t *Transmitter) Release(frame uint64) {
	t.mu.Lock()
	delete(t.frames, frame)
	t.mu.Unlock()
}

// Receiver is Bob's end of a real device: it reads Bob's frame records (his
// detections) from a device stream. It implements quantum.Receiver.
type Receiver struct {
	s    *stream
	h    Header
	log  *slog.Logger
	rand io.Reader

	rbits uint64 // buffered random bits for squashing
	rn    int
}

// NewReceiver reads the stream header from r (a Bob stream) and returns the
// receiver. The caller owns r and must close it to release a read blocked
// in the device.
func NewReceiver(ctx context.Context, r io.Reader, o Options) (*Receiver, error) {
	o.defaults()
	s, err := newStream(ctx, r)
	if err != nil {
		return nil, err
	}
	if h := s.dec.Header(); h.Role != RoleBob {
		return nil, fmt.Errorf("%w: NewReceiver needs a bob stream, got %s", ErrRole, h.Role)
	}
	return &Receiver{s: s, h: s.dec.Header(), log: o.Logger, rand: o.Rand}, nil
}

// Header returns the device stream's header.
func (b *Receiver) Header() Header { return b.h }

func (b *Receiver) peek(ctx context.Context) (*BobFrame, error) {
	if b.s.broken != nil {
		return nil, b.s.broken
	}
	if b.s.nextB != nil {
		return b.s.nextB, nil
	}
	err := b.s.run(ctx, func() error {
		f, err := b.s.dec.ReadBob()
		if err != nil {
			return eos(err)
		}
		b.s.nextB = f
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b.s.nextB, nil
}

// Next reads (without consuming) the next frame record and returns its
// frame number and pulse count.
func (b *Receiver) Next(ctx context.Context) (frame, pulses uint64, err error) {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	f, err := b.peek(ctx)
	if err != nil {
		return 0, 0, err
	}
	return f.Frame, f.Pulses, nil
}

// Receive takes the next frame record off the device stream; it must be
// frame frame of n pulses (else ErrFrameMismatch, and the record stays
// next). Double clicks are squashed to a random bit from Options.Rand.
// Cancellation is as for Transmitter.Send.
func (b *Receiver) Receive(ctx context.Context, frame uint64, n uint64) ([]quantum.Detection, error) {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	f, err := b.peek(ctx)
	if err != nil {
		return nil, fmt.Errorf("devstream: receive frame %d: %w", frame, err)
	}
	if f.Frame != frame || f.Pulses != n {
		return nil, mismatch(RoleBob, frame, n, f.Frame, f.Pulses)
	}
	b.s.nextB = nil
	out := make([]quantum.Detection, len(f.Clicks))
	doubles := 0
	for i, c := range f.Clicks {
		bit := c.Bit
		if c.Double {
			doubles++
			if bit, err = b.randomBit(); err != nil {
				return nil, fmt.Errorf("devstream: receive frame %d: squashing: %w", frame, err)
			}
		}
		out[i] = quantum.Detection{Index: c.Index, Basis: c.Basis, Bit: bit}
	}
	b.log.Debug("devstream frame received", "role", "bob", "frame", frame, "pulses", n, "detections", len(out), "double_clicks", doubles)
	return out, nil
}

func (b *Receiver) randomBit() (uint8, error) {
	if b.rn == 0 {
		var buf [8]byte
		if _, err := io.ReadFull(b.rand, buf[:]); err != nil {
			return 0, err
		}
		for _, x := range buf {
			b.rbits = b.rbits<<8 | uint64(x)
		}
		b.rn = 64
	}
	bit := uint8(b.rbits & 1)
	b.rbits >>= 1
	b.rn--
	return bit, nil
}

var (
	_ quantum.Transmitter = (*Transmitter)(nil)
	_ quantum.Receiver    = (*Receiver)(nil)
)

// frameChoices is Alice's choices for indices of a frame she sent.
func frameChoices(f *AliceFrame, frame uint64, indices []uint64) ([]quantum.PulseRecord, error) {
	out := make([]quantum.PulseRecord, len(indices))
	for j, i := range indices {
		if i >= f.Pulses {
			return nil, fmt.Errorf("%w: frame %d index %d ≥ %d", ErrUnknownPulse, frame, i, f.Pulses)
		}
		out[j] = f.At(i)
	}
	return out, nil
}
