package node

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
)

// httpNode is one node of KME sender_app with the seed listener on and the
// given HTTP limits; it returns the node and an SAE client TLS config.
func httpNode(t *testing.T, lim HTTPLimits) (*Node, *tls.Config) {
	t.Helper()
	p := newTestPKI(t)
	s := allocSite(t, p, "sender_app", 1)
	seedLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.configure = func(cfg *Config) {
		cfg.SeedListen, cfg.SeedListener = seedLn.Addr().String(), seedLn
		cfg.HTTP = lim
	}
	s.boot(nil)
	n := s.node("n1")
	sae, err := p.ca.IssueSAE("jkl")
	if err != nil {
		t.Fatal(err)
	}
	if err := sae.Write(p.dir, "jkl"); err != nil {
		t.Fatal(err)
	}
	cl := p.clientTLS(t, filepath.Join(p.dir, "jkl.crt"), filepath.Join(p.dir, "jkl.key"))
	cl.NextProtos = []string{"http/1.1"}
	return n, cl
}

type listenerCase struct {
	name string
	dial func(t *testing.T) net.Conn
}

func listeners(n *Node, cl *tls.Config) []listenerCase {
	return []listenerCase{
		{"seed", func(t *testing.T) net.Conn {
			c, err := net.Dial("tcp", n.SeedAddr())
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
		{"mTLS", func(t *testing.T) net.Conn {
			c, err := tls.Dial("tcp", n.Addr(), cl)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
	}
}

// TestHTTPSlowBodyCutOff: a request whose body arrives at 1 byte/s is cut
// off within http.read_timeout on both HTTP listeners (the seed listener
// and the mTLS port), not held open.
func TestHTTPSlowBodyCutOff(t *testing.T) {
	const readTimeout = time.Second
	n, cl := httpNode(t, HTTPLimits{ReadTimeout: Duration(readTimeout)})
	paths := map[string]string{"seed": "/register_connection", "mTLS": "/api/v1/keys/ghi/dec_keys"}
	for _, lc := range listeners(n, cl) {
		t.Run(lc.name, func(t *testing.T) {
			c := lc.dial(t)
			defer c.Close()
			start := time.Now()
			if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", paths[lc.name]); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			defer close(done)
			go func() { // one byte a second until the server gives up
				tick := time.NewTicker(time.Second)
				defer tick.Stop()
				for {
					select {
					case <-done:
						return
					case <-tick.C:
						if _, err := c.Write([]byte(" ")); err != nil {
							return
						}
					}
				}
			}()
			bound := readTimeout + testenv.Scaled(3*time.Second)
			_ = c.SetReadDeadline(time.Now().Add(bound))
			_, err := io.Copy(io.Discard, c) // an answer, then the close
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the connection was still open after %v", time.Since(start))
			}
			t.Logf("cut off after %v (%v)", time.Since(start).Round(time.Millisecond), err)
		})
	}
}

// TestHTTPConnectionCap: with http.max_conns N, connection N+1 on a
// listener is closed at once; once one of the N closes, a new connection
// is served again.
func TestHTTPConnectionCap(t *testing.T) {
	const max = 3
	n, cl := httpNode(t, HTTPLimits{MaxConns: max})
	for _, lc := range listeners(n, cl) {
		t.Run(lc.name, func(t *testing.T) {
			var held []net.Conn
			defer func() {
				for _, c := range held {
					_ = c.Close()
				}
			}()
			for i := 0; i < max; i++ {
				c := lc.dial(t)
				held = append(held, c)
				if code := get(t, c, "/healthz"); code != http.StatusOK && code != http.StatusNotFound {
					t.Fatalf("connection %d: %d", i+1, code)
				}
			}
			extra := lc.dial(t)
			_ = extra.SetDeadline(time.Now().Add(testenv.Scaled(5 * time.Second)))
			_, _ = fmt.Fprintf(extra, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			b, err := io.ReadAll(extra)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || len(b) > 0 {
				t.Fatalf("connection %d beyond the cap was not refused: %q, %v", max+1, b, err)
			}
			_ = extra.Close()
			_ = held[0].Close()
			held = held[1:]
			testenv.WaitFor(t, "a freed slot to serve a new connection", func() bool {
				c := lc.dial(t)
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(testenv.Scaled(5 * time.Second)))
				_, _ = fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
				r, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					return false
				}
				_ = r.Body.Close()
				return true
			})
		})
	}
}

// get sends one GET on c and returns the status.
func get(t *testing.T, c net.Conn, path string) int {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(testenv.Scaled(5 * time.Second)))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	r, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, r.Body)
	_ = r.Body.Close()
	return r.StatusCode
}

// TestHTTPErrorBodiesJSON: every error answer of both HTTP listeners is the
// JSON Error object, including a path outside /api/v1/keys/ (404), a
// method the mux does not route (405), oversized headers (431) and a
// malformed request (400), which net/http answers itself.
func TestHTTPErrorBodiesJSON(t *testing.T) {
	n, cl := httpNode(t, HTTPLimits{MaxHeaderBytes: 4 << 10})
	big := "X-Big: " + strings.Repeat("a", 16<<10) + "\r\n"
	for _, lc := range listeners(n, cl) {
		for _, tc := range []struct {
			name, raw string
			code      int
		}{
			{"unknown path", "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusNotFound},
			{"unknown admin path", "GET /admin/v2/x HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusNotFound},
			{"headers too large", "GET /api/v1/keys/ghi/status HTTP/1.1\r\nHost: x\r\n" + big + "\r\n", http.StatusRequestHeaderFieldsTooLarge},
			{"malformed request", "GET /x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", http.StatusBadRequest},
			{"metrics by POST", "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 0},
		} {
			t.Run(lc.name+"/"+tc.name, func(t *testing.T) {
				c := lc.dial(t)
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(testenv.Scaled(5 * time.Second)))
				if _, err := io.WriteString(c, tc.raw); err != nil {
					t.Fatal(err)
				}
				r, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Body.Close()
				body, _ := io.ReadAll(r.Body)
				if tc.code != 0 && r.StatusCode != tc.code {
					t.Errorf("status %d, want %d: %s", r.StatusCode, tc.code, body)
				}
				if r.StatusCode < 400 {
					t.Fatalf("status %d", r.StatusCode)
				}
				if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
					t.Errorf("Content-Type %q: %s", ct, body)
				}
				var e struct {
					Message *string `json:"message"`
					Details []any   `json:"details"`
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Message == nil || *e.Message == "" || e.Details == nil {
					t.Errorf("not an Error object: %v: %q", err, body)
				}
			})
		}
	}
}
