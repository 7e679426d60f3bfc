package node

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"qkdkms/node/forward"
	"qkdkms/plugins/testenv"
)

// TestAdminForwarding: an admin call at a follower runs at the leader; a
// call another node already forwarded is not forwarded again; the absolute
// deadline header of an older node is still honoured during a rolling
// upgrade.
func TestAdminForwarding(t *testing.T) {
	p := newTestPKI(t)
	site := newTestSite(t, p, "site_a", 3, nil)
	leader, follower := site.leader(), site.follower()
	crt, key := p.operator(t, "site_a")
	client := httpClient(p.clientTLS(t, crt, key))
	legacy := func(d time.Duration) string { return strconv.FormatInt(time.Now().Add(d).UnixNano(), 10) }

	tests := []struct {
		name     string
		node     *Node
		header   http.Header
		status   int
		wantCode string
	}{
		{"follower forwards", follower, nil, http.StatusOK, ""},
		{"relative deadline", follower, http.Header{forward.DeadlineHeader: {strconv.FormatInt(testenv.Scaled(10*time.Second).Milliseconds(), 10)}}, http.StatusOK, ""},
		{"legacy deadline ahead", follower, http.Header{forward.LegacyDeadlineHeader: {legacy(testenv.Scaled(10 * time.Second))}}, http.StatusOK, ""},
		{"legacy deadline passed", follower, http.Header{forward.LegacyDeadlineHeader: {legacy(-time.Second)}}, http.StatusServiceUnavailable, forward.CodeUnavailable},
		{"forwarded to a follower", follower, http.Header{forward.ForwardedHeader: {"n9"}}, http.StatusMisdirectedRequest, forward.CodeNotLeader},
		{"forwarded to the leader", leader, http.Header{forward.ForwardedHeader: {"n9"}}, http.StatusOK, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(20*time.Second))
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+tc.node.Addr()+"/admin/v1/servers", nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header[k] = v
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.status)
			}
			if tc.wantCode != "" {
				if e := forward.DecodeError(resp.StatusCode, body); e.Code != tc.wantCode {
					t.Errorf("code %q (%s), want %q", e.Code, e.Message, tc.wantCode)
				}
			}
		})
	}
}
