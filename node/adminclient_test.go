package node

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"qkdkms/node/forward"
)

// TestAdminClientDoUpTo drives the admin client's one address loop against
// plain TLS servers: an address down is passed over, an error answer ends
// the loop, and the answer bound is the caller's.
func TestAdminClientDoUpTo(t *testing.T) {
	type answer struct {
		Echo string `json:"echo"`
	}
	// down is an address nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()

	var hits atomic.Int32
	ok := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/admin/v1/test" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "unexpected request", http.StatusTeapot)
			return
		}
		w.Write([]byte(`{"echo":"` + strings.Repeat("x", 100) + `"}`))
	}))
	defer ok.Close()
	refused := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeAdminError(w, http.StatusForbidden, forward.CodeForbidden, "operators only")
	}))
	defer refused.Close()
	okAddr, refusedAddr := ok.Listener.Addr().String(), refused.Listener.Addr().String()

	for _, tc := range []struct {
		name    string
		addrs   []string
		limit   int64
		wantErr string // "" for success
		wantIs  error
		hits    int32 // requests the answering server saw
	}{
		{"first down, second answers", []string{down, okAddr}, maxAdminAnswer, "", nil, 1},
		{"error body is reported, next address not tried", []string{refusedAddr, okAddr}, maxAdminAnswer,
			"node: admin request refused: /admin/v1/test at " + refusedAddr + ": forbidden: operators only", forward.ErrForbidden, 0},
		{"answer cut at the limit", []string{okAddr}, 50, "node: admin /admin/v1/test at " + okAddr + ": decode: ", nil, 1},
		{"none reachable: the last address's error", []string{down, down}, maxAdminAnswer, "node: admin POST /admin/v1/test at " + down + ": ", nil, 0},
		{"no addresses", nil, maxAdminAnswer, "node: admin client has no addresses", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits.Store(0)
			c := &AdminClient{Addrs: tc.addrs, HTTP: ok.Client()}
			// Both servers share the httptest certificate, so one client trusts both.
			var out answer
			err := c.doUpTo(context.Background(), tc.limit, http.MethodPost, "/admin/v1/test", struct{}{}, &out)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if out.Echo != strings.Repeat("x", 100) {
					t.Fatalf("answer %+v", out)
				}
			} else {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want prefix %q", err, tc.wantErr)
				}
				if tc.wantIs != nil && (!errors.Is(err, ErrAdmin) || !errors.Is(err, tc.wantIs)) {
					t.Fatalf("err %v is not ErrAdmin and %v", err, tc.wantIs)
				}
			}
			if got := hits.Load(); got != tc.hits {
				t.Fatalf("answering server saw %d requests, want %d", got, tc.hits)
			}
		})
	}
}
