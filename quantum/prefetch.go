package quantum

import (
	"context"
	"fmt"
	"sync"
)

// NextReceiver is a Receiver that can also take whichever frame arrives
// next, whatever its number (what PrefetchReceiver needs).
type NextReceiver interface {
	Receiver
	// ReceiveNext measures the next frame to arrive and returns its number,
	// its pulse count and the detections.
	ReceiveNext(ctx context.Context) (frame, n uint64, dets []Detection, err error)
}

// A live link pipelines frames: while frame f is post-processed (sifting,
// estimation, reconciliation and amplification exchange many classical
// messages but little quantum work), the quantum transmission of frame f+1
// and Bob's detection of it already run. PrefetchTransmitter and
// PrefetchReceiver do that under the Transmitter and Receiver interfaces, so
// a session neither knows nor cares: its Send or Receive of frame f+1 finds
// the frame already on its way or measured. Nothing about keys changes —
// a prefetched frame is raw detections, kept until its session asks for
// them, and dropped (Release) if no session does.

// PrefetchTransmitter sends frame f+1 in the background as soon as frame f
// was sent, with the same pulse count.
type PrefetchTransmitter struct {
	tx     Transmitter
	ctx    context.Context
	cancel context.CancelFunc

	mu   sync.Mutex
	next *sent // the frame sent ahead, or nil
}

type sent struct {
	frame, n uint64
	done     chan struct{}
	stats    FrameStats
	err      error
}

// NewPrefetchTransmitter wraps tx. Close stops it.
func NewPrefetchTransmitter(tx Transmitter) *PrefetchTransmitter {
	ctx, cancel := context.WithCancel(context.Background())
	return &PrefetchTransmitter{tx: tx, ctx: ctx, cancel: cancel}
}

// Send returns frame's stats: from the frame sent ahead when it is this one,
// else by sending it now. Either way frame+1 is then sent ahead.
func (p *PrefetchTransmitter) Send(ctx context.Context, frame, n uint64) (FrameStats, error) {
	p.mu.Lock()
	ahead := p.next
	p.next = nil
	p.mu.Unlock()
	var st FrameStats
	var err error
	if ahead != nil {
		select {
		case <-ahead.done:
		case <-ctx.Done():
			p.mu.Lock()
			p.next = ahead // still on its way; a later Send may take it
			p.mu.Unlock()
			return FrameStats{}, ctx.Err()
		}
	}
	switch {
	case ahead != nil && ahead.frame == frame && ahead.n == n && ahead.err == nil:
		st = ahead.stats
	default:
		if ahead != nil && ahead.err == nil {
			p.tx.Release(ahead.frame) // sent ahead but no session took it
		}
		if st, err = p.tx.Send(ctx, frame, n); err != nil {
			return FrameStats{}, err
		}
	}
	p.sendAhead(frame+1, n)
	return st, nil
}

func (p *PrefetchTransmitter) sendAhead(frame, n uint64) {
	if p.ctx.Err() != nil {
		return
	}
	s := &sent{frame: frame, n: n, done: make(chan struct{})}
	p.mu.Lock()
	p.next = s
	p.mu.Unlock()
	go func() {
		defer close(s.done)
		s.stats, s.err = p.tx.Send(p.ctx, frame, n)
	}()
}

// Choices passes through.
func (p *PrefetchTransmitter) Choices(frame uint64, indices []uint64) ([]PulseRecord, error) {
	return p.tx.Choices(frame, indices)
}

// Release passes through.
func (p *PrefetchTransmitter) Release(frame uint64) { p.tx.Release(frame) }

// Close stops sending ahead and releases a frame no session took.
func (p *PrefetchTransmitter) Close() error {
	p.cancel()
	p.mu.Lock()
	ahead := p.next
	p.next = nil
	p.mu.Unlock()
	if ahead != nil {
		<-ahead.done
		if ahead.err == nil {
			p.tx.Release(ahead.frame)
		}
	}
	return nil
}

// PrefetchReceiver measures the next frame in the background as soon as a
// session took the previous one.
type PrefetchReceiver struct {
	rx     NextReceiver
	ctx    context.Context
	cancel context.CancelFunc

	mu   sync.Mutex
	next *received
}

type received struct {
	done     chan struct{}
	frame, n uint64
	dets     []Detection
	err      error
}

// NewPrefetchReceiver wraps rx and starts measuring the first frame to
// arrive. Close stops it.
func NewPrefetchReceiver(rx NextReceiver) *PrefetchReceiver {
	ctx, cancel := context.WithCancel(context.Background())
	p := &PrefetchReceiver{rx: rx, ctx: ctx, cancel: cancel}
	p.receiveAhead()
	return p
}

func (p *PrefetchReceiver) receiveAhead() {
	r := &received{done: make(chan struct{})}
	p.mu.Lock()
	p.next = r
	p.mu.Unlock()
	go func() {
		defer close(r.done)
		r.frame, r.n, r.dets, r.err = p.rx.ReceiveNext(p.ctx)
	}()
}

// Receive returns the detections of frame: frames that arrived before it
// and that no session asked for (Alice sent ahead, then had nothing to
// fill, or sent the frame again with another pulse count) are dropped. A
// later frame is an error.
func (p *PrefetchReceiver) Receive(ctx context.Context, frame, n uint64) ([]Detection, error) {
	for {
		p.mu.Lock()
		r := p.next
		p.mu.Unlock()
		select {
		case <-r.done:
		case <-ctx.Done():
			return nil, ctx.Err() // the frame stays ahead for the next call
		}
		if r.err != nil {
			if p.ctx.Err() == nil {
				p.receiveAhead() // a failed frame is gone; try the next one
			}
			return nil, r.err
		}
		p.receiveAhead()
		switch {
		case r.frame < frame || (r.frame == frame && r.n != n):
			continue // sent ahead, never used (Alice sent the frame again with the session's pulse count)
		case r.frame != frame:
			return nil, fmt.Errorf("quantum: expected frame %d of %d pulses, got frame %d of %d", frame, n, r.frame, r.n)
		}
		return r.dets, nil
	}
}

// Close stops measuring ahead.
func (p *PrefetchReceiver) Close() error {
	p.cancel()
	return nil
}
