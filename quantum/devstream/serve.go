package devstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"qkdkms/quantum/sim"
)

// ServeOptions configure the device emulator (Serve).
type ServeOptions struct {
	// Model is the simulated link; its PulseRate paces the frames (a frame
	// of Pulses pulses every Pulses/PulseRate seconds) and goes into the
	// stream headers.
	Model sim.Model
	Seed  uint64
	// Pulses per frame.
	Pulses uint64
	// Device is the device name in the headers (default "qkdkms devstream
	// serve").
	Device string
	// Alice and Bob are the listeners Alice's and Bob's streams are served
	// on. Serve closes them.
	Alice, Bob net.Listener
	// ClientQueue is how many frames a client may fall behind before the
	// emulator drops frames for it (default 64): a device does not wait.
	ClientQueue int
	Logger      *slog.Logger
}

// ServeStats count what an emulator did.
type ServeStats struct {
	Frames  atomic.Uint64 // frames simulated and sent to the clients
	Late    atomic.Uint64 // frame numbers skipped because the simulation fell behind the pulse rate
	Dropped atomic.Uint64 // frame records not sent to a client that fell behind
	Clients atomic.Int64  // clients connected
}

// Serve is a QKD device emulator: it runs the simulator (quantum/sim) and
// streams what Alice's and Bob's devices would export, as QKDS streams
// (FORMAT.md), to every client of the Alice and Bob listeners. Frames are
// numbered by time since the start: frame k is sent at k·Pulses/PulseRate
// seconds, to the clients connected then (a client joins the live stream
// where it is; frames no client would get are not simulated). When the
// simulation is slower than the pulse rate the frames it could not make
// are skipped (ServeStats.Late). It returns when ctx ends.
func Serve(ctx context.Context, o ServeOptions, st *ServeStats) error {
	if st == nil {
		st = new(ServeStats)
	}
	if o.Alice == nil || o.Bob == nil {
		return errors.New("devstream: serve: need an Alice and a Bob listener")
	}
	defer o.Alice.Close()
	defer o.Bob.Close()
	if o.Pulses == 0 || o.Pulses > MaxPulses {
		return fmt.Errorf("devstream: serve: %d pulses per frame", o.Pulses)
	}
	if o.Device == "" {
		o.Device = "qkdkms devstream serve"
	}
	if o.ClientQueue <= 0 {
		o.ClientQueue = 64
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	link, err := sim.New(o.Model, o.Seed)
	if err != nil {
		return fmt.Errorf("devstream: serve: %w", err)
	}
	defer link.Close()
	h := Header{Intensities: o.Model.Intensities, IntensityProbs: o.Model.IntensityProbs, PulseRate: o.Model.PulseRate, Device: o.Device, Version: Version}
	h.Role = RoleAlice
	if err := h.Validate(); err != nil {
		return fmt.Errorf("devstream: serve: %w", err)
	}
	ha := appendHeader(nil, h)
	h.Role = RoleBob
	hb := appendHeader(nil, h)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	alice := &hub{header: ha, queue: o.ClientQueue, st: st, log: o.Logger.With("role", "alice")}
	bob := &hub{header: hb, queue: o.ClientQueue, st: st, log: o.Logger.With("role", "bob")}
	for _, x := range []struct {
		h *hub
		l net.Listener
	}{{alice, o.Alice}, {bob, o.Bob}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x.h.accept(ctx, &wg, x.l)
		}()
	}
	stop := context.AfterFunc(ctx, func() { _ = o.Alice.Close(); _ = o.Bob.Close() })
	defer stop()

	dt := time.Duration(float64(o.Pulses) / o.Model.PulseRate * float64(time.Second))
	dt = max(dt, time.Microsecond)
	start := time.Now()
	timer := time.NewTimer(dt)
	defer timer.Stop()
	var ra, rb []byte
	var scratch []uint64
	for k := uint64(1); ; {
		select {
		case <-ctx.Done():
			cancel()
			wg.Wait()
			return nil
		case <-timer.C:
		}
		if alice.active() || bob.active() {
			fa, fb, s, err := simFrame(ctx, link, k, o.Pulses, scratch)
			scratch = s
			if err != nil {
				if ctx.Err() != nil {
					continue
				}
				return fmt.Errorf("devstream: serve: frame %d: %w", k, err)
			}
			body, err := appendClicks(make([]byte, 0, len(fb.Clicks)+8), fb)
			if err != nil {
				return fmt.Errorf("devstream: serve: frame %d: %w", k, err)
			}
			ra = appendRecord(make([]byte, 0, len(fa.Packed)+32), KindAlice, k, o.Pulses, fa.Packed)
			rb = appendRecord(make([]byte, 0, len(body)+32), KindBob, k, o.Pulses, body)
			alice.send(ra)
			bob.send(rb)
			st.Frames.Add(1)
		}
		// the next frame is the one whose measurement ends next
		now := uint64(time.Since(start) / dt)
		next := max(k+1, now)
		if next > k+1 {
			st.Late.Add(next - k - 1)
		}
		k = next
		timer.Reset(time.Until(start.Add(time.Duration(k) * dt)))
	}
}

// hub is one role's listener and its clients.
type hub struct {
	header []byte
	queue  int
	st     *ServeStats
	log    *slog.Logger

	mu      sync.Mutex
	clients map[chan []byte]struct{}
}

func (h *hub) active() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients) > 0
}

func (h *hub) send(rec []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.clients {
		select {
		case ch <- rec:
		default:
			h.st.Dropped.Add(1)
		}
	}
}

func (h *hub) accept(ctx context.Context, wg *sync.WaitGroup, l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() == nil {
				h.log.Error("devstream serve: accept", "err", err)
			}
			return
		}
		ch := make(chan []byte, h.queue)
		h.mu.Lock()
		if h.clients == nil {
			h.clients = map[chan []byte]struct{}{}
		}
		h.clients[ch] = struct{}{}
		h.mu.Unlock()
		h.st.Clients.Add(1)
		h.log.Info("devstream serve: client connected", "remote", c.RemoteAddr().String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := h.write(ctx, c, ch)
			h.mu.Lock()
			delete(h.clients, ch)
			h.mu.Unlock()
			h.st.Clients.Add(-1)
			_ = c.Close()
			h.log.Info("devstream serve: client gone", "remote", c.RemoteAddr().String(), "err", err)
		}()
	}
}

// write streams the header, then each record queued for the client.
func (h *hub) write(ctx context.Context, c net.Conn, ch chan []byte) error {
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	if _, err := c.Write(h.header); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case rec := <-ch:
			if _, err := c.Write(rec); err != nil {
				return err
			}
		}
	}
}
