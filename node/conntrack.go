package node

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"time"
)

// connTracker remembers every connection a node holds (accepted, dialled by
// Raft, dialled by its HTTP clients) so Kill can drop them all at once, the
// way a crashed process would.
type connTracker struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newConnTracker() *connTracker { return &connTracker{conns: map[net.Conn]struct{}{}} }

func (t *connTracker) add(c net.Conn) net.Conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		_ = c.Close()
		return c
	}
	tc := &trackedConn{Conn: c, t: t}
	t.conns[tc] = struct{}{}
	return tc
}

func (t *connTracker) remove(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// closeAll closes every tracked connection and refuses new ones.
func (t *connTracker) closeAll() {
	t.mu.Lock()
	t.closed = true
	cs := make([]net.Conn, 0, len(t.conns))
	for c := range t.conns {
		cs = append(cs, c)
	}
	t.conns = map[net.Conn]struct{}{}
	t.mu.Unlock()
	for _, c := range cs {
		_ = c.(*trackedConn).Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	t    *connTracker
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.t.remove(c) })
	return c.Conn.Close()
}

type trackedListener struct {
	net.Listener
	t *connTracker
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.t.add(c), nil
}

func (t *connTracker) wrapListener(ln net.Listener) net.Listener {
	return &trackedListener{Listener: ln, t: t}
}

// dial opens a tracked TCP connection.
func (t *connTracker) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return t.add(c), nil
}

// httpTransport is an HTTP/1.1 client transport over tracked connections.
func (t *connTracker) httpTransport(cfg *tls.Config) *http.Transport {
	return &http.Transport{
		DialContext:         t.dial,
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
	}
}
