package sim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"qkdkms/quantum"
)

// Link carries frames of photons in transit from Alice to Bob, in order.
type Link interface {
	SendFrame(ctx context.Context, f *TransitFrame) error
	RecvFrame(ctx context.Context) (*TransitFrame, error)
}

// LocalLink connects the two halves in one process with a buffered Go
// channel.
type LocalLink struct {
	ch   chan *TransitFrame
	done chan struct{}
	once sync.Once
}

// NewLocalLink returns an in-process link holding up to buffer frames in
// flight (minimum 1).
func NewLocalLink(buffer int) *LocalLink {
	if buffer < 1 {
		buffer = 1
	}
	return &LocalLink{ch: make(chan *TransitFrame, buffer), done: make(chan struct{})}
}

// SendFrame hands f to the receiver, waiting while the buffer is full.
func (l *LocalLink) SendFrame(ctx context.Context, f *TransitFrame) error {
	select {
	case <-l.done:
		return quantum.ErrLinkDown
	default:
	}
	select {
	case l.ch <- f:
		return nil
	case <-l.done:
		return quantum.ErrLinkDown
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RecvFrame returns the next frame.
func (l *LocalLink) RecvFrame(ctx context.Context) (*TransitFrame, error) {
	select {
	case f := <-l.ch:
		return f, nil
	case <-l.done:
		return nil, quantum.ErrLinkDown
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close takes the link down for both ends.
func (l *LocalLink) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// deadliner is implemented by net.Conn.
type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// StreamLink carries frames over a byte stream (a TCP or TLS connection):
// the sending process calls SendFrame, the receiving process RecvFrame. A
// cancelled context interrupts a blocked call by setting a past deadline
// when the stream supports deadlines, and by closing the stream otherwise.
// I/O failures are reported wrapping quantum.ErrLinkDown.
type StreamLink struct {
	rw  io.ReadWriteCloser
	br  *bufio.Reader
	wmu sync.Mutex
	rmu sync.Mutex
	bw  *bufio.Writer
}

// NewStreamLink wraps a connection.
func NewStreamLink(rw io.ReadWriteCloser) *StreamLink {
	return &StreamLink{rw: rw, br: bufio.NewReaderSize(rw, 1<<16), bw: bufio.NewWriterSize(rw, 1<<16)}
}

func (s *StreamLink) interrupt(ctx context.Context, read bool) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		if d, ok := s.rw.(deadliner); ok {
			if read {
				_ = d.SetReadDeadline(time.Unix(1, 0))
			} else {
				_ = d.SetWriteDeadline(time.Unix(1, 0))
			}
			return
		}
		_ = s.rw.Close()
	})
}

func (s *StreamLink) linkErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("sim: %s: %w", op, ctx.Err())
	}
	if errors.Is(err, ErrCodec) {
		return err
	}
	return fmt.Errorf("%w: %s: %w", quantum.ErrLinkDown, op, err)
}

// SendFrame writes f to the stream and flushes it.
func (s *StreamLink) SendFrame(ctx context.Context, f *TransitFrame) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	stop := s.interrupt(ctx, false)
	defer stop()
	if err := WriteFrame(s.bw, f); err != nil {
		return s.linkErr(ctx, "send frame", err)
	}
	if err := s.bw.Flush(); err != nil {
		return s.linkErr(ctx, "send frame", err)
	}
	return nil
}

// RecvFrame reads the next frame from the stream.
func (s *StreamLink) RecvFrame(ctx context.Context) (*TransitFrame, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	stop := s.interrupt(ctx, true)
	defer stop()
	f, err := ReadFrame(s.br)
	if err != nil {
		return nil, s.linkErr(ctx, "receive frame", err)
	}
	return f, nil
}

// Close closes the stream.
func (s *StreamLink) Close() error { return s.rw.Close() }
