package session

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"qkdkms/quantum"
)

// Mux shares one channel between two sessions in flight at once: the one
// being finished (Ahead.Finish), whose messages carry its ID, and the next
// one's front half, which gets every other session message. Sends are
// serialised, so the order on the channel is the order each party's
// transcript records. A message is read from the channel only when a lane
// asks for one.
//
// The first message that is not a session's (the caller's own, such as
// the link's JSON) marks the end of the peer's sessions: the lanes then
// fail with ErrLanesEnded instead of waiting, and After returns it.
type Mux struct {
	ch     quantum.Channel
	id     [16]byte
	sendMu sync.Mutex
	token  chan struct{} // held by the lane reading ch
	mu     sync.Mutex
	queue  [3][][]byte      // read from ch, for lane i
	ready  [2]chan struct{} // lane i has news: a message of its own, or the peer's own message
	err    error            // ch failed: every later Recv fails
}

// ErrLanesEnded: the peer sent a message of its own after its sessions'
// messages, so the session waiting on a Mux lane gets nothing more.
var ErrLanesEnded = fmt.Errorf("%w: the peer has ended both sessions", ErrAbort)

const (
	laneFinishing = 0
	laneNext      = 1
	laneAfter     = 2
)

// NewMux shares ch between the session with ID finishing and the next one.
func NewMux(ch quantum.Channel, finishing [16]byte) *Mux {
	m := &Mux{ch: ch, id: finishing, token: make(chan struct{}, 1)}
	m.token <- struct{}{}
	for i := range m.ready {
		m.ready[i] = make(chan struct{}, 1)
	}
	return m
}

// Finishing is the channel of the session being finished.
func (m *Mux) Finishing() quantum.Channel { return lane{m, laneFinishing} }

// Next is the channel of the next session.
func (m *Mux) Next() quantum.Channel { return lane{m, laneNext} }

// route is the lane a message read from the channel belongs to.
func (m *Mux) route(b []byte) int {
	switch {
	case !envelope(b):
		return laneAfter
	case bytes.Equal(b[1:17], m.id[:]):
		return laneFinishing
	}
	return laneNext
}

// envelope reports whether b is a session's message.
func envelope(b []byte) bool {
	if len(b) < 17 {
		return false
	}
	switch b[0] {
	case tHello, tHelloAck, tFrame, tIndices, tStep, tFin, tAbort:
		return true
	}
	return false
}

// After is the channel for the caller's own messages once neither lane is
// in use. Its Recv skips session messages before the first message of the
// peer's own: they are what a session that aborted at one party sent to
// the other, which had stopped reading.
func (m *Mux) After() quantum.Channel { return lane{m, laneAfter} }

type lane struct {
	m *Mux
	i int
}

func (l lane) Send(ctx context.Context, b []byte) error {
	l.m.sendMu.Lock()
	defer l.m.sendMu.Unlock()
	return l.m.ch.Send(ctx, b)
}

// pop returns a queued message for lane i, or the channel's error, or
// ErrLanesEnded for a session lane once the peer's own message arrived.
func (m *Mux) pop(i int) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if q := m.queue[i]; len(q) > 0 {
		b := q[0]
		m.queue[i] = q[1:]
		return b, true, nil
	}
	if i != laneAfter && len(m.queue[laneAfter]) > 0 && m.err == nil {
		return nil, false, ErrLanesEnded
	}
	return nil, false, m.err
}

func (l lane) Recv(ctx context.Context) ([]byte, error) {
	m := l.m
	for l.i == laneAfter {
		if b, ok, err := m.pop(laneAfter); ok || err != nil {
			return b, err
		}
		b, err := m.ch.Recv(ctx)
		if err != nil || !envelope(b) {
			return b, err
		}
	}
	for {
		if b, ok, err := m.pop(l.i); ok || err != nil {
			return b, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-m.ready[l.i]:
			continue
		case <-m.token:
		}
		// This lane reads the channel until a message for it arrives,
		// queueing the other lane's; the other lane may take the token
		// whenever this one gives it back.
		if b, ok, err := m.pop(l.i); ok || err != nil {
			m.token <- struct{}{}
			return b, err
		}
		b, err := m.ch.Recv(ctx)
		if err != nil {
			if ctx.Err() == nil {
				// The channel failed, not this lane's wait: both lanes end.
				m.mu.Lock()
				m.err = err
				m.mu.Unlock()
				m.signal(1 - l.i)
			}
			m.token <- struct{}{}
			return nil, err
		}
		j := m.route(b)
		if j != l.i {
			m.mu.Lock()
			m.queue[j] = append(m.queue[j], b)
			m.mu.Unlock()
			if j == laneAfter {
				m.signal(1 - l.i) // the other lane must stop waiting too
			} else {
				m.signal(j)
			}
		}
		m.token <- struct{}{}
		if j == l.i {
			return b, nil
		}
	}
}

func (m *Mux) signal(i int) {
	select {
	case m.ready[i] <- struct{}{}:
	default:
	}
}
