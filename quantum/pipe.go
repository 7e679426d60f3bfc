package quantum

import (
	"context"
	"sync"
)

// PipeEnd is one end of an in-process classical channel made by Pipe.
type PipeEnd struct {
	in, out *pipeQueue
	link    *pipeLink
}

// pipeLink is shared by the two ends; closing either closes it.
type pipeLink struct {
	once sync.Once
	done chan struct{}
}

type pipeQueue struct {
	mu     sync.Mutex
	msgs   [][]byte
	signal chan struct{} // capacity 1: "something was queued"
}

// Pipe returns the two ends of an in-process Channel: messages are delivered
// in order and whole, sends never block (the queue is unbounded), every call
// honours its context, and closing either end makes every later (and every
// blocked) Send or Recv on both ends return ErrLinkDown; messages still
// queued are dropped, as a broken link drops them.
func Pipe() (*PipeEnd, *PipeEnd) {
	l := &pipeLink{done: make(chan struct{})}
	a := &pipeQueue{signal: make(chan struct{}, 1)}
	b := &pipeQueue{signal: make(chan struct{}, 1)}
	return &PipeEnd{in: a, out: b, link: l}, &PipeEnd{in: b, out: a, link: l}
}

// Send queues a copy of msg for the peer.
func (e *PipeEnd) Send(ctx context.Context, msg []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-e.link.done:
		return ErrLinkDown
	default:
	}
	cp := append([]byte(nil), msg...)
	e.out.mu.Lock()
	e.out.msgs = append(e.out.msgs, cp)
	e.out.mu.Unlock()
	select {
	case e.out.signal <- struct{}{}:
	default:
	}
	return nil
}

// Recv returns the next message from the peer, waiting for one.
func (e *PipeEnd) Recv(ctx context.Context) ([]byte, error) {
	for {
		select {
		case <-e.link.done:
			return nil, ErrLinkDown
		default:
		}
		e.in.mu.Lock()
		if len(e.in.msgs) > 0 {
			m := e.in.msgs[0]
			e.in.msgs[0] = nil
			e.in.msgs = e.in.msgs[1:]
			e.in.mu.Unlock()
			return m, nil
		}
		e.in.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-e.link.done:
			return nil, ErrLinkDown
		case <-e.in.signal:
		}
	}
}

// Close breaks the link for both ends. It is idempotent.
func (e *PipeEnd) Close() error {
	e.link.once.Do(func() { close(e.link.done) })
	return nil
}

var _ Channel = (*PipeEnd)(nil)
