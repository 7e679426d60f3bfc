package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of HTTPLimits (node/CONFIG.md, HTTP limits).
const (
	DefaultHTTPReadHeaderTimeout = 10 * time.Second
	DefaultHTTPReadTimeout       = 30 * time.Second
	DefaultHTTPWriteTimeout      = 2 * time.Minute
	DefaultHTTPIdleTimeout       = 2 * time.Minute
	DefaultHTTPMaxConns          = 512
	DefaultHTTPMaxHeaderBytes    = 64 << 10
)

// HTTPLimits bound the two HTTP servers of a node: the mutual-TLS one (ETSI,
// admin, internal, metrics) and the plain-HTTP seed listener. Raft and QKD
// link connections share the TLS port but the mux hands them off by ALPN
// before HTTP: none of these limits applies to them.
type HTTPLimits struct {
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout Duration `json:"read_header_timeout"`
	// ReadTimeout bounds reading a whole request, body included: a body
	// still arriving after it is cut off (the connection is closed).
	ReadTimeout Duration `json:"read_timeout"`
	// WriteTimeout bounds a request from the end of its headers to the end
	// of its answer.
	WriteTimeout Duration `json:"write_timeout"`
	// IdleTimeout closes a keep-alive connection idle for that long.
	IdleTimeout Duration `json:"idle_timeout"`
	// MaxConns caps the open HTTP connections of each listener; a
	// connection beyond it is closed at once.
	MaxConns int `json:"max_conns"`
	// MaxHeaderBytes caps a request's header size (431 beyond).
	MaxHeaderBytes int `json:"max_header_bytes"`
}

func (l HTTPLimits) withDefaults() HTTPLimits {
	for _, d := range []struct {
		v   *Duration
		def time.Duration
	}{
		{&l.ReadHeaderTimeout, DefaultHTTPReadHeaderTimeout}, {&l.ReadTimeout, DefaultHTTPReadTimeout},
		{&l.WriteTimeout, DefaultHTTPWriteTimeout}, {&l.IdleTimeout, DefaultHTTPIdleTimeout},
	} {
		if *d.v == 0 {
			*d.v = Duration(d.def)
		}
	}
	if l.MaxConns == 0 {
		l.MaxConns = DefaultHTTPMaxConns
	}
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = DefaultHTTPMaxHeaderBytes
	}
	return l
}

func (l HTTPLimits) validate(add func(format string, a ...any)) {
	for name, d := range map[string]Duration{
		"http.read_header_timeout": l.ReadHeaderTimeout, "http.read_timeout": l.ReadTimeout,
		"http.write_timeout": l.WriteTimeout, "http.idle_timeout": l.IdleTimeout,
	} {
		if d < 0 {
			add("%s: negative", name)
		}
	}
	if l.MaxConns < 0 {
		add("http.max_conns: negative")
	}
	if l.MaxHeaderBytes < 0 || l.MaxHeaderBytes > 1<<20 {
		add("http.max_header_bytes: %d outside 0 … 1 MiB", l.MaxHeaderBytes)
	}
}

// newHTTPServer is an http.Server for h with the limits, JSON error bodies
// (jsonErrors, and the early errors net/http writes itself: errorConn) and
// r.TLS restored from the connection (restoreTLS).
func newHTTPServer(h http.Handler, lim HTTPLimits, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           restoreTLS(jsonErrors(h)),
		ReadHeaderTimeout: lim.ReadHeaderTimeout.D(),
		ReadTimeout:       lim.ReadTimeout.D(),
		WriteTimeout:      lim.WriteTimeout.D(),
		IdleTimeout:       lim.IdleTimeout.D(),
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		ConnContext:       tlsStateContext,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}

// ---- connection cap ----

// limitListener caps the connections it has handed out and not yet seen
// closed: one more is closed at once (refused) instead of being served.
// Every connection it returns is an *errorConn.
type limitListener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused func() // may be nil
}

func newLimitListener(ln net.Listener, max int, refused func()) *limitListener {
	return &limitListener{Listener: ln, max: int64(max), refused: refused}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			_ = c.Close()
			if l.refused != nil {
				l.refused()
			}
			continue
		}
		return &errorConn{Conn: c, release: func() { l.open.Add(-1) }}, nil
	}
}

// ---- JSON error bodies ----

// errorConn is a served HTTP connection. It releases its slot of the
// limitListener once closed, and rewrites the answers net/http writes
// itself before any handler runs (431 for oversized headers, 400 for a
// malformed request, …: text/plain) into the JSON Error object every other
// answer carries (etsi/API.md, Errors).
type errorConn struct {
	net.Conn
	release func()
	once    sync.Once
}

// earlyError matches net/http's own error answer, written in one Write.
var earlyError = regexp.MustCompile(`^HTTP/1\.1 ([0-9]{3}) ([^\r\n]*)\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n`)

func (c *errorConn) Write(p []byte) (int, error) {
	if !bytes.HasPrefix(p, []byte("HTTP/1.1 4")) && !bytes.HasPrefix(p, []byte("HTTP/1.1 5")) {
		return c.Conn.Write(p)
	}
	m := earlyError.FindSubmatch(p)
	if m == nil {
		return c.Conn.Write(p)
	}
	code, _ := strconv.Atoi(string(m[1]))
	body := errorBody(code)
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %s %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", m[1], m[2], len(body))
	b.Write(body)
	if _, err := c.Conn.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *errorConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// errorBody is the ETSI Error object with the status text as its message.
func errorBody(code int) []byte {
	msg := http.StatusText(code)
	if msg == "" {
		msg = "error"
	}
	b, _ := json.Marshal(map[string]any{"message": msg, "details": []any{}})
	return append(b, '\n')
}

// jsonErrors turns an error answer a handler writes as text/plain
// (http.Error; the ServeMux's 404 and 405) into the JSON Error object with
// a fixed message, the status text: such bodies may quote internals.
func jsonErrors(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&jsonErrorWriter{ResponseWriter: w}, r)
	})
}

type jsonErrorWriter struct {
	http.ResponseWriter
	wroteHeader bool
	swallow     bool // the handler's own body is replaced
}

func (w *jsonErrorWriter) WriteHeader(code int) {
	if w.wroteHeader {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.wroteHeader = true
	h := w.Header()
	ct := h.Get("Content-Type")
	if code >= 400 && strings.HasPrefix(ct, "text/plain") {
		body := errorBody(code)
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		h.Del("X-Content-Type-Options")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.swallow = true
		w.ResponseWriter.WriteHeader(code)
		_, _ = w.ResponseWriter.Write(body)
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *jsonErrorWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.swallow {
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *jsonErrorWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ---- r.TLS behind errorConn ----

// net/http sets r.TLS only for a *tls.Conn; the connections it gets are
// errorConns (over a *tls.Conn on the node's port). tlsStateContext keeps
// the handshake's state in the connection's context and restoreTLS puts it
// back into r.TLS, where every handler reads the verified client
// certificate.
type tlsStateKey struct{}

func tlsStateContext(ctx context.Context, c net.Conn) context.Context {
	if ec, ok := c.(*errorConn); ok {
		c = ec.Conn
	}
	if tc, ok := c.(*tls.Conn); ok {
		st := tc.ConnectionState()
		return context.WithValue(ctx, tlsStateKey{}, &st)
	}
	return ctx
}

func restoreTLS(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			if st, ok := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState); ok {
				r.TLS = st
			}
		}
		h.ServeHTTP(w, r)
	})
}
