package devstream

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"qkdkms/quantum"
)

// item is one decoded frame record waiting for a session.
type item struct {
	frame, pulses uint64
	a             *AliceFrame
	b             *BobFrame
}

// feed is one opened device stream of a link driver: a goroutine decodes
// records as they arrive into a queue the sessions take frames from. A live
// stream's queue holds at most max frames (the oldest are dropped: the
// device does not wait); a file's reader waits for room instead.
type feed struct {
	d     *Driver
	role  Role
	rc    io.ReadCloser
	dec   *Decoder
	h     Header
	live  bool
	loop  bool
	max   int
	stall time.Duration

	ready chan struct{} // a frame, an error or the close arrived
	n     atomic.Int64  // len(q), for Health

	mu       sync.Mutex
	space    *sync.Cond // the reader waits here for room (files)
	q        []item
	err      error // the reader's end, reported after q
	reported bool  // a session saw err (or a stall): reconnect a live stream
	closed   bool
}

// newFeed reads the stream header (within ctx and the stall timeout),
// checks the role and starts decoding.
func newFeed(ctx context.Context, d *Driver, rc io.ReadCloser, role Role) (*feed, error) {
	f := &feed{d: d, role: role, rc: rc, live: d.src.live(), loop: d.o.Loop, max: d.o.MaxLagFrames,
		stall: time.Duration(d.o.StallTimeout), ready: make(chan struct{}, 1)}
	f.space = sync.NewCond(&f.mu)
	var err error
	if c, ok := rc.(net.Conn); ok {
		_ = c.SetReadDeadline(time.Now().Add(f.stall))
		stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
		f.dec, err = NewDecoder(rc)
		if !stop() {
			return nil, fmt.Errorf("reading the header: %w", ctx.Err())
		}
		_ = c.SetReadDeadline(time.Time{})
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("%w: no header within %v", ErrStall, f.stall)
		}
	} else {
		f.dec, err = NewDecoder(rc)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the header: %w", err)
	}
	f.h = f.dec.Header()
	if err := checkRole(f.h, role); err != nil {
		return nil, err
	}
	go f.run()
	return f, nil
}

func checkRole(h Header, role Role) error {
	if h.Role == role {
		return nil
	}
	site := "Alice's site (the site whose KME ID sorts first)"
	if role == RoleBob {
		site = "Bob's site (the site whose KME ID sorts last)"
	}
	return fmt.Errorf("%w: %s needs %s stream, the device (%q) sends %s stream", ErrRole, site, article(role), h.Device, article(h.Role))
}

func article(r Role) string {
	if r == RoleAlice {
		return "an alice"
	}
	return "a " + r.String()
}

// run decodes records until the stream ends, fails or is closed.
func (f *feed) run() {
	var offset, first, last uint64
	pass := 0 // frames in this pass over a looped file
	for {
		var it item
		var err error
		if f.role == RoleAlice {
			var a *AliceFrame
			if a, err = f.dec.ReadAlice(); err == nil {
				it = item{frame: a.Frame, pulses: a.Pulses, a: a}
			}
		} else {
			var b *BobFrame
			if b, err = f.dec.ReadBob(); err == nil {
				it = item{frame: b.Frame, pulses: b.Pulses, b: b}
			}
		}
		if errors.Is(err, io.EOF) && f.loop {
			if pass == 0 {
				err = fmt.Errorf("%w: a looped file must hold a frame", ErrEndOfStream)
			} else if err = f.rewind(); err == nil {
				offset += last - first + 1
				pass = 0
				f.d.count(0, 0, 1)
				continue
			}
		}
		if err != nil {
			f.end(eos(err))
			return
		}
		if offset == 0 && pass == 0 {
			first = it.frame
		}
		last, pass = it.frame, pass+1
		it.frame += offset
		if it.a != nil {
			it.a.Frame = it.frame
		} else {
			it.b.Frame = it.frame
		}
		if !f.push(it) {
			return
		}
	}
}

// rewind restarts a looped file.
func (f *feed) rewind() error {
	s, ok := f.rc.(io.Seeker)
	if !ok {
		return errors.New("devstream: loop: the source cannot seek")
	}
	if _, err := s.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("devstream: loop: %w", err)
	}
	dec, err := NewDecoder(f.rc)
	if err != nil {
		return err
	}
	if err := checkRole(dec.Header(), f.role); err != nil {
		return err
	}
	f.dec = dec
	return nil
}

func (f *feed) signal() {
	select {
	case f.ready <- struct{}{}:
	default:
	}
}

func (f *feed) end(err error) {
	f.mu.Lock()
	if !f.closed {
		f.err = err
	}
	f.mu.Unlock()
	f.signal()
}

// push queues a frame; it reports false once the feed is closed.
func (f *feed) push(it item) bool {
	f.mu.Lock()
	for !f.live && len(f.q) >= f.max && !f.closed {
		f.space.Wait()
	}
	if f.closed {
		f.mu.Unlock()
		return false
	}
	var dropped uint64
	if len(f.q) >= f.max {
		f.q[0] = item{}
		f.q = f.q[1:]
		dropped = 1
	}
	f.q = append(f.q, it)
	f.n.Store(int64(len(f.q)))
	f.d.count(1, dropped, 0)
	f.mu.Unlock()
	f.signal()
	return true
}

// head waits for the first queued frame (first dropping all but the newest
// when newest is set) and returns it without taking it off the queue.
func (f *feed) head(ctx context.Context, newest bool) (item, error) {
	timer := time.NewTimer(f.stall)
	defer timer.Stop()
	for {
		f.mu.Lock()
		if n := len(f.q); n > 0 {
			if newest && n > 1 {
				clear(f.q[:n-1])
				f.q = f.q[n-1:]
				f.n.Store(1)
				f.space.Broadcast()
				f.d.count(0, uint64(n-1), 0)
			}
			it := f.q[0]
			f.mu.Unlock()
			return it, nil
		}
		if f.closed {
			f.mu.Unlock()
			return item{}, fmt.Errorf("%w: the stream is closed", quantum.ErrLinkDown)
		}
		if f.err != nil {
			f.reported = true
			err := f.err
			f.mu.Unlock()
			return item{}, err
		}
		f.mu.Unlock()
		select {
		case <-f.ready:
		case <-ctx.Done():
			return item{}, fmt.Errorf("devstream: waiting for a frame: %w", ctx.Err())
		case <-timer.C:
			f.mu.Lock()
			f.reported = f.live
			f.mu.Unlock()
			return item{}, fmt.Errorf("%w: no frame within %v", ErrStall, f.stall)
		}
	}
}

// pop takes the first frame off the queue.
func (f *feed) pop(skipped bool) {
	f.mu.Lock()
	if len(f.q) > 0 {
		f.q[0] = item{}
		f.q = f.q[1:]
		f.n.Store(int64(len(f.q)))
		f.space.Broadcast()
		if skipped {
			f.d.count(0, 1, 0)
		}
	}
	f.mu.Unlock()
}

// dead says a session saw the stream end or stall: a live stream is
// reconnected before its next use.
func (f *feed) dead() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reported || f.closed
}

func (f *feed) buffered() int { return int(f.n.Load()) }

func (f *feed) close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	f.space.Broadcast()
	f.mu.Unlock()
	_ = f.rc.Close()
	f.signal()
}

func (d *Driver) count(read, skipped, loops uint64) {
	d.mu.Lock()
	d.st.read += read
	d.st.skipped += skipped
	d.st.loops += loops
	d.mu.Unlock()
}

// sentFrames keeps Alice's frames sent, for Choices, until Release.
type sentFrames struct {
	mu sync.Mutex
	m  map[uint64]*AliceFrame
}

func newSentFrames() *sentFrames { return &sentFrames{m: map[uint64]*AliceFrame{}} }

func (s *sentFrames) put(f *AliceFrame) {
	s.mu.Lock()
	s.m[f.Frame] = f
	s.mu.Unlock()
}

func (s *sentFrames) release(frame uint64) {
	s.mu.Lock()
	delete(s.m, frame)
	s.mu.Unlock()
}

func (s *sentFrames) choices(frame uint64, indices []uint64) ([]quantum.PulseRecord, error) {
	s.mu.Lock()
	f, ok := s.m[frame]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: frame %d", ErrUnknownPulse, frame)
	}
	return frameChoices(f, frame, indices)
}

// bitSource hands out random bits to squash double clicks.
type bitSource struct {
	r    io.Reader
	bits uint64
	n    int
}

func defaultRand() io.Reader { return rand.Reader }

func (b *bitSource) bit() (uint8, error) {
	if b.n == 0 {
		var buf [8]byte
		if _, err := io.ReadFull(b.r, buf[:]); err != nil {
			return 0, err
		}
		for _, x := range buf {
			b.bits = b.bits<<8 | uint64(x)
		}
		b.n = 64
	}
	bit := uint8(b.bits & 1)
	b.bits >>= 1
	b.n--
	return bit, nil
}
