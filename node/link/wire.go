package link

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"qkdkms/quantum"
)

// Message kinds on a link connection.
const (
	kindClassical byte = 'C' // a classical-channel message (authenticated above this layer)
	kindQuantum   byte = 'Q' // a driver's frame (simulated photons in transit)
	kindCommit    byte = 'K' // a block's commit messages, beside the next session (protocol 2)
)

// maxMessage bounds one message on the wire (a transit frame of a large
// session is a few MB).
const maxMessage = 256 << 20

// wire multiplexes the classical channel, the simulated quantum channel and
// the commit messages over one TLS connection between the two sites' leaders: each message is
// a kind byte, a 4-byte big-endian length and the payload. A reader
// goroutine sorts incoming messages into one queue per kind. When the
// connection fails, every pending and later call returns quantum.ErrLinkDown.
type wire struct {
	conn net.Conn

	wmu     sync.Mutex
	bw      *bufio.Writer
	writeDL time.Time // the connection's write deadline now

	classical chan []byte
	quantum   chan []byte
	commit    chan []byte
	done      chan struct{}
	once      sync.Once
	err       error // set before done is closed
}

var (
	_ quantum.Channel        = (*wire)(nil)
	_ quantum.FrameTransport = quantumTransport{}
)

func newWire(conn net.Conn) *wire {
	w := &wire{
		conn:      conn,
		bw:        bufio.NewWriterSize(conn, 64<<10),
		classical: make(chan []byte, 64),
		quantum:   make(chan []byte, 4),
		commit:    make(chan []byte, 4),
		done:      make(chan struct{}),
	}
	go w.read()
	return w
}

func (w *wire) read() {
	br := bufio.NewReaderSize(w.conn, 64<<10)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			w.fail(err)
			return
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n > maxMessage {
			w.fail(fmt.Errorf("message of %d bytes exceeds %d", n, maxMessage))
			return
		}
		buf, err := readPayload(br, n)
		if err != nil {
			w.fail(err)
			return
		}
		var q chan []byte
		switch hdr[0] {
		case kindClassical:
			q = w.classical
		case kindQuantum:
			q = w.quantum
		case kindCommit:
			q = w.commit
		default:
			w.fail(fmt.Errorf("unknown message kind %q", hdr[0]))
			return
		}
		select {
		case q <- buf:
		case <-w.done:
			return
		}
	}
}

// smallMessage: payloads up to this size are read into a buffer of their
// announced size; longer ones grow as the bytes arrive, so that a header
// alone cannot make the reader allocate up to maxMessage.
const smallMessage = 64 << 10

func readPayload(r io.Reader, n uint32) ([]byte, error) {
	if n <= smallMessage {
		buf := make([]byte, n)
		_, err := io.ReadFull(r, buf)
		return buf, err
	}
	var payload bytes.Buffer
	_, err := io.CopyN(&payload, r, int64(n))
	return payload.Bytes(), err
}

// fail closes the wire with the first error.
func (w *wire) fail(err error) {
	w.once.Do(func() {
		w.err = err
		close(w.done)
		_ = w.conn.Close()
	})
}

// Close tears the connection down.
func (w *wire) Close() error {
	w.fail(errors.New("closed"))
	return nil
}

// closed reports whether the connection has failed or been closed.
func (w *wire) closed() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *wire) downErr() error {
	return fmt.Errorf("%w: %v", quantum.ErrLinkDown, w.err)
}

func (w *wire) send(ctx context.Context, kind byte, payload []byte) error {
	if len(payload) > maxMessage {
		return fmt.Errorf("link: message of %d bytes exceeds %d", len(payload), maxMessage)
	}
	select {
	case <-w.done:
		return w.downErr()
	default:
	}
	w.wmu.Lock()
	defer w.wmu.Unlock()
	// A write is bounded by its context's deadline (every session and
	// commit has one); without one, cancellation interrupts it. Both cost
	// a call into the runtime poller, so each is set only when needed.
	dl, ok := ctx.Deadline()
	if dl != w.writeDL {
		_ = w.conn.SetWriteDeadline(dl)
		w.writeDL = dl
	}
	if !ok {
		stop := context.AfterFunc(ctx, func() { _ = w.conn.SetWriteDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	_, err := w.bw.Write(hdr[:])
	if err == nil {
		_, err = w.bw.Write(payload)
	}
	if err == nil {
		err = w.bw.Flush()
	}
	if err != nil {
		w.fail(err)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return w.downErr()
	}
	return nil
}

func (w *wire) recv(ctx context.Context, q chan []byte) ([]byte, error) {
	select {
	case b := <-q:
		return b, nil
	default:
	}
	select {
	case b := <-q:
		return b, nil
	case <-w.done:
		// The reader queues a message before it fails the wire: one that
		// arrived before the connection ended is still delivered (a select
		// with both ready picks at random).
		select {
		case b := <-q:
			return b, nil
		default:
		}
		return nil, w.downErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Send implements quantum.Channel for the classical channel.
func (w *wire) Send(ctx context.Context, msg []byte) error { return w.send(ctx, kindClassical, msg) }

// Recv implements quantum.Channel for the classical channel.
func (w *wire) Recv(ctx context.Context) ([]byte, error) { return w.recv(ctx, w.classical) }

// commitLink carries a block's commit messages on their own queue, so they
// travel while the next session uses the classical channel.
type commitLink struct{ w *wire }

func (c commitLink) Send(ctx context.Context, msg []byte) error {
	return c.w.send(ctx, kindCommit, msg)
}

func (c commitLink) Recv(ctx context.Context) ([]byte, error) { return c.w.recv(ctx, c.w.commit) }

// quantumTransport carries a driver's frames (the simulator's photons in
// transit) over the same connection.
type quantumTransport struct{ w *wire }

func (q quantumTransport) SendFrame(ctx context.Context, b []byte) error {
	return q.w.send(ctx, kindQuantum, b)
}

func (q quantumTransport) RecvFrame(ctx context.Context) ([]byte, error) {
	return q.w.recv(ctx, q.w.quantum)
}
