package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"qkdkms/etsi/pki"
	"qkdkms/node/link"
)

// RaftALPN is the ALPN protocol that marks a TLS connection on a node's
// port as a Raft stream. Every other connection is HTTP.
const RaftALPN = "qkdkms-raft/1"

// handshakeTimeout bounds the TLS handshake of an accepted connection.
const handshakeTimeout = 10 * time.Second

// ErrMuxClosed is returned by Accept once the multiplexer is closed.
var ErrMuxClosed = errors.New("node: listener closed")

// mux accepts TLS connections on one listener and splits them by ALPN:
// RaftALPN streams go to the Raft stream layer, everything else to HTTP.
// Handshakes run in their own goroutines so a slow client cannot stall
// the accept loop.
type mux struct {
	ln     net.Listener // raw TCP
	tlsCfg *tls.Config
	kmeID  string
	logger *slog.Logger

	raftCh chan net.Conn
	httpCh chan net.Conn
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
	// addMu orders wg.Add after an Accept against close: no Add once done
	// is closed (an Add racing Wait is a WaitGroup misuse; -race caught it
	// when a node was killed as a connection arrived).
	addMu sync.Mutex

	refusedRaft func() // metrics hook, may be nil
	// onLink takes QKD link connections (ALPN link.ALPN); unset refuses them.
	onLink atomic.Pointer[func(*tls.Conn)]
}

func newMux(ln net.Listener, tlsCfg *tls.Config, kmeID string, logger *slog.Logger) *mux {
	return &mux{
		ln:     ln,
		tlsCfg: tlsCfg,
		kmeID:  kmeID,
		logger: logger,
		raftCh: make(chan net.Conn),
		httpCh: make(chan net.Conn),
		done:   make(chan struct{}),
	}
}

// serve runs the accept loop until the listener is closed.
func (m *mux) serve() {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.logger.Warn("accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		m.addMu.Lock()
		select {
		case <-m.done:
			m.addMu.Unlock()
			_ = c.Close()
			return
		default:
		}
		m.wg.Add(1)
		m.addMu.Unlock()
		go func() {
			defer m.wg.Done()
			m.handle(c)
		}()
	}
}

func (m *mux) handle(raw net.Conn) {
	tc := tls.Server(raw, m.tlsCfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		m.logger.Debug("TLS handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		_ = raw.Close()
		return
	}
	st := tc.ConnectionState()
	ch := m.httpCh
	if st.NegotiatedProtocol == link.ALPN {
		h := m.onLink.Load()
		if h == nil {
			m.logger.Warn("refused QKD link connection: no link configured", "remote", raw.RemoteAddr().String())
			_ = tc.Close()
			return
		}
		(*h)(tc)
		return
	}
	if st.NegotiatedProtocol == RaftALPN {
		// Raft streams only from nodes of this site.
		if len(st.PeerCertificates) == 0 || pki.KMEID(st.PeerCertificates[0]) != m.kmeID {
			peer := ""
			if len(st.PeerCertificates) > 0 {
				peer = st.PeerCertificates[0].Subject.CommonName
			}
			m.logger.Warn("refused Raft stream from a certificate of another site",
				"remote", raw.RemoteAddr().String(), "peer_cn", peer)
			if m.refusedRaft != nil {
				m.refusedRaft()
			}
			_ = tc.Close()
			return
		}
		ch = m.raftCh
	}
	select {
	case ch <- tc:
	case <-m.done:
		_ = tc.Close()
	}
}

// close stops accepting and closes the listener. Connections already handed
// out are owned by their consumers.
func (m *mux) close() error {
	var err error
	m.once.Do(func() {
		m.addMu.Lock()
		close(m.done)
		m.addMu.Unlock()
		err = m.ln.Close()
	})
	m.wg.Wait()
	return err
}

// chanListener is a net.Listener fed by the mux. Closing it stops its
// Accept without touching the socket, which the mux owns (closing the HTTP
// server must not close Raft's listener, nor the other way round).
type chanListener struct {
	m      *mux
	ch     chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func newChanListener(m *mux, ch chan net.Conn) *chanListener {
	return &chanListener{m: m, ch: ch, closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, ErrMuxClosed
	case <-l.m.done:
		return nil, ErrMuxClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.m.ln.Addr() }

// streamLayer is a raft.StreamLayer over the node's TLS port: Accept takes
// RaftALPN connections from the mux, Dial opens a TLS connection with the
// node certificate, offers only RaftALPN and requires the server to carry
// this site's KME identity.
type streamLayer struct {
	*chanListener
	dialCfg *tls.Config
	// dialConfig, when set, builds each dial's config for the host dialled
	// (the node's current TLS material) instead of dialCfg.
	dialConfig func(host string) *tls.Config
	advert     net.Addr
	track      *connTracker // nil: untracked
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(m *mux, clientCfg *tls.Config, advertise net.Addr) *streamLayer {
	cfg := clientCfg.Clone()
	cfg.NextProtos = []string{RaftALPN}
	cfg.VerifyConnection = requireKME(m.kmeID)
	return &streamLayer{chanListener: newChanListener(m, m.raftCh), dialCfg: cfg, advert: advertise}
}

func (s *streamLayer) Addr() net.Addr {
	if s.advert != nil {
		return s.advert
	}
	return s.m.ln.Addr()
}

func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var raw net.Conn
	var err error
	if s.track != nil {
		raw, err = s.track.dial(ctx, "tcp", string(address))
	} else {
		raw, err = (&net.Dialer{}).DialContext(ctx, "tcp", string(address))
	}
	if err != nil {
		return nil, fmt.Errorf("node: raft dial %s: %w", address, err)
	}
	cfg := s.dialCfg
	if host, _, err := net.SplitHostPort(string(address)); err == nil {
		if s.dialConfig != nil {
			cfg = s.dialConfig(host)
		} else {
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("node: raft dial %s: %w", address, err)
	}
	if c.ConnectionState().NegotiatedProtocol != RaftALPN {
		_ = c.Close()
		return nil, fmt.Errorf("node: raft dial %s: peer did not accept %s", address, RaftALPN)
	}
	return c, nil
}

// requireKME returns a VerifyConnection callback that demands the peer's
// (already chain-verified) certificate carry kme:<kmeID>.
func requireKME(kmeID string) func(tls.ConnectionState) error {
	return func(st tls.ConnectionState) error {
		if len(st.PeerCertificates) == 0 {
			return errors.New("node: peer presented no certificate")
		}
		if got := pki.KMEID(st.PeerCertificates[0]); got != kmeID {
			return fmt.Errorf("node: peer certificate is for KME %q, want %q", got, kmeID)
		}
		return nil
	}
}

// requireAnyKME demands that the peer carry some kme:<ID> identity.
func requireAnyKME(st tls.ConnectionState) error {
	if len(st.PeerCertificates) == 0 {
		return errors.New("node: peer presented no certificate")
	}
	if pki.KMEID(st.PeerCertificates[0]) == "" {
		return errors.New("node: peer certificate carries no KME identity")
	}
	return nil
}

// staticAddr is a net.Addr for an advertised host:port.
type staticAddr string

func (a staticAddr) Network() string { return "tcp" }
func (a staticAddr) String() string  { return string(a) }
