package node

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"qkdkms/plugins/testenv"
)

func TestSiteMembershipThroughFollower(t *testing.T) {
	p := newTestPKI(t)
	site := newTestSite(t, p, "site_a", 3, nil)
	leader := site.leader()
	follower := site.follower()
	t.Logf("leader %s, asking follower %s", leader.ID(), follower.ID())

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := p.adminClient(t, "site_a", follower.Addr())
	res, err := admin.Servers(ctx)
	if err != nil {
		t.Fatalf("servers via follower: %v", err)
	}
	if len(res.Servers) != 3 || res.Leader != leader.ID() || res.KMEID != "site_a" {
		t.Fatalf("servers = %+v, want 3 servers led by %s", res, leader.ID())
	}

	// A 4th node starts empty (no bootstrap) and is joined through a follower.
	n4 := site.add("n4")
	res, err = admin.Join(ctx, "n4", n4.Addr())
	if err != nil {
		t.Fatalf("join via follower: %v", err)
	}
	if len(res.Servers) != 4 {
		t.Fatalf("after join: %+v", res.Servers)
	}
	if d := site.waitDigests(); d == "" {
		t.Fatal("empty digest")
	}
	testenv.WaitFor(t, "n4 to follow "+leader.ID(), func() bool { id, _ := n4.Store().Leader(); return id == leader.ID() })

	// Remove it again, this time asking n4 itself (a follower).
	res, err = p.adminClient(t, "site_a", n4.Addr()).Remove(ctx, "n4")
	if err != nil {
		t.Fatalf("remove via n4: %v", err)
	}
	for _, s := range res.Servers {
		if s.ID == "n4" {
			t.Fatalf("n4 still listed: %+v", res.Servers)
		}
	}
	site.crash("n4")
	if res, err = admin.Servers(ctx); err != nil || len(res.Servers) != 3 {
		t.Fatalf("servers after remove: %+v, %v", res, err)
	}

	// Removing the leader itself, asked through a follower: the site goes on
	// with two voters under a new leader.
	res, err = admin.Remove(ctx, leader.ID())
	if err != nil {
		t.Fatalf("remove the leader: %v", err)
	}
	site.crash(leader.ID())
	newLeader := site.leader()
	if newLeader.ID() == leader.ID() {
		t.Fatal("removed leader still leads")
	}
	testenv.WaitFor(t, "two servers", func() bool {
		r, err := admin.Servers(ctx)
		return err == nil && len(r.Servers) == 2 && r.Leader == newLeader.ID()
	})

	// Bad requests are refused without forwarding.
	if _, err := admin.Join(ctx, "", "127.0.0.1:1"); !errors.Is(err, ErrAdmin) || !strings.Contains(err.Error(), CodeBadRequest) {
		t.Errorf("join without id: %v", err)
	}
	if _, err := admin.Join(ctx, "n9", "0.0.0.0:1"); !errors.Is(err, ErrAdmin) {
		t.Errorf("join with wildcard address: %v", err)
	}
}

func TestAdminAuthorization(t *testing.T) {
	p := newTestPKI(t)
	site := newTestSite(t, p, "site_a", 1, nil)
	n := site.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	sae, err := p.ca.IssueSAE("alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := sae.Write(p.dir, "alice"); err != nil {
		t.Fatal(err)
	}
	otherCrt, otherKey := p.node(t, "site_b", "n1")
	opB, opBKey := p.operator(t, "site_b")
	opA, opAKey := p.operator(t, "site_a")
	nodeA, nodeAKey := p.node(t, "site_a", "n1")
	for _, tc := range []struct {
		name      string
		crt, key  string
		wantAdmit bool
	}{
		{"operator of this site", opA, opAKey, true},
		{"node of this site", nodeA, nodeAKey, true},
		{"SAE", filepath.Join(p.dir, "alice.crt"), filepath.Join(p.dir, "alice.key"), false},
		{"node of another site", otherCrt, otherKey, false},
		{"operator of another site", opB, opBKey, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewAdminClient([]string{n.Addr()}, p.caFile(), tc.crt, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Servers(ctx)
			if tc.wantAdmit && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.wantAdmit && (err == nil || !strings.Contains(err.Error(), CodeForbidden)) {
				t.Fatalf("got %v, want forbidden", err)
			}
		})
	}

	// No client certificate: the TLS handshake fails.
	noCert := &tls.Config{RootCAs: p.ca.Pool(), MinVersion: tls.VersionTLS12}
	if _, err := httpClient(noCert).Get("https://" + n.Addr() + "/healthz"); err == nil {
		t.Error("request without client certificate accepted")
	}
}

func TestRaftALPNRefusesOtherSite(t *testing.T) {
	p := newTestPKI(t)
	site := allocSite(t, p, "site_a", 1)
	site.raftOverTLS = true
	site.boot(nil)
	n := site.leader()

	dial := func(kme string) (*tls.Conn, error) {
		crt, key := p.node(t, kme, "n1")
		cfg := p.clientTLS(t, crt, key)
		cfg.NextProtos = []string{RaftALPN}
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", n.Addr(), cfg)
	}
	// Raft speaks first on a connection: a byte of RPC type then msgpack.
	// A refused stream is closed by the server after the handshake.
	readClosed := func(c *tls.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return errors.Is(err, io.EOF) || (err != nil && !isTimeout(err))
	}
	other, err := dial("site_b")
	if err == nil {
		if got := other.ConnectionState().NegotiatedProtocol; got != RaftALPN {
			t.Fatalf("ALPN = %q", got)
		}
		if !readClosed(other) {
			t.Error("Raft stream from another site's certificate stayed open")
		}
		other.Close()
	} // a handshake error is a refusal too
	if got := counterValue(t, n, "qkdkms_raft_streams_refused_total"); got < 1 {
		t.Errorf("qkdkms_raft_streams_refused_total = %v, want ≥ 1", got)
	}

	own, err := dial("site_a")
	if err != nil {
		t.Fatalf("own site dial: %v", err)
	}
	defer own.Close()
	if readClosed(own) {
		t.Error("Raft stream from this site's certificate was closed")
	}

	// Dialling the node as a Raft peer that expects another site fails.
	crt, key := p.node(t, "site_b", "n2")
	cfg := p.clientTLS(t, crt, key)
	sl := &streamLayer{dialCfg: func() *tls.Config {
		c := cfg.Clone()
		c.NextProtos = []string{RaftALPN}
		c.VerifyConnection = requireKME("site_b")
		return c
	}()}
	if c, err := sl.Dial(raftAddr(n.Addr()), 5*time.Second); err == nil {
		c.Close()
		t.Error("stream layer accepted a server of another site")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestHealthReadyMetrics(t *testing.T) {
	p := newTestPKI(t)
	site := newTestSite(t, p, "site_a", 3, nil)
	leader := site.leader()
	site.waitDigests()
	crt, key := p.operator(t, "site_a")
	c := httpClient(p.clientTLS(t, crt, key))
	get := func(n *Node, path string) (int, string) {
		resp, err := c.Get("https://" + n.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	for _, n := range site.live() {
		if code, b := get(n, "/healthz"); code != http.StatusOK {
			t.Errorf("%s /healthz: %d %s", n.ID(), code, b)
		}
		// Ready once the node knows a leader and has applied the leader's
		// barrier; right after an election that can take a moment.
		testenv.WaitFor(t, n.ID()+" /readyz to answer 200", func() bool {
			code, _ := get(n, "/readyz")
			return code == http.StatusOK
		})
	}
	body := scrape(t, c, leader)
	for _, want := range []string{
		`qkdkms_raft_state{state="leader"} 1`,
		`qkdkms_raft_is_leader 1`,
		"qkdkms_raft_term ",
		"qkdkms_raft_commit_index ",
		"qkdkms_raft_applied_index ",
		"qkdkms_raft_commits_total ",
		"qkdkms_fsm_keys ",
		"go_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("leader metrics lack %q", want)
		}
	}
	fb := scrape(t, c, site.follower())
	if !strings.Contains(fb, `qkdkms_raft_state{state="follower"} 1`) || !strings.Contains(fb, "qkdkms_raft_is_leader 0") {
		t.Errorf("follower metrics do not say follower")
	}
}

func scrape(t *testing.T, c *http.Client, n *Node) string {
	t.Helper()
	resp, err := c.Get("https://" + n.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// counterValue reads a metric without labels from the node's registry.
func counterValue(t *testing.T, n *Node, name string) float64 {
	t.Helper()
	mfs, err := n.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			m := mf.GetMetric()[0]
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func raftAddr(a string) raft.ServerAddress { return raft.ServerAddress(a) }
