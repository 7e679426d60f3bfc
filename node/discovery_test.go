package node

import (
	"context"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
)

// fakeSRV answers the SRV name with the nodes "published" now, as a
// headless Service publishes the pods that exist (not-ready ones too).
type fakeSRV struct {
	name  string
	mu    sync.Mutex
	addrs map[string]string // node ID → advertised address, published
}

func (f *fakeSRV) LookupSRV(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
	if service != "" || proto != "" || name != f.name {
		return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*net.SRV
	for _, id := range sortedKeys(f.addrs) {
		host, port, _ := net.SplitHostPort(f.addrs[id])
		p, _ := strconv.Atoi(port)
		out = append(out, &net.SRV{Target: host + ".", Port: uint16(p), Weight: 1})
	}
	if len(out) == 0 {
		return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	return name, out, nil
}

func (f *fakeSRV) publish(id, addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs[id] = addr
}

func (f *fakeSRV) unpublish(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.addrs, id)
}

// discoverySite is a StatefulSet played in process: pods qkd-0..N-1, each
// with its own address and data dir, the fake DNS and the desired replica
// count a scale changes.
type discoverySite struct {
	*testSite
	dns     *fakeSRV
	desired atomic.Int64
	writes  int
}

func newDiscoverySite(t *testing.T, max int) *discoverySite {
	s := allocSiteAt(t, newTestPKI(t), "sender_app", filepath.Join(t.TempDir(), "site.kek"), nil, nil)
	d := &discoverySite{testSite: s, dns: &fakeSRV{name: "_https._tcp.qkd-peers.test.svc.cluster.local", addrs: map[string]string{}}}
	// The chart's config: no bootstrap map, discovery on.
	s.configure = func(cfg *Config) {
		cfg.Discovery = DiscoveryConfig{Mode: DiscoveryDNS, SRV: d.dns.name, Resolver: d.dns,
			RetryInterval: Duration(testenv.Scaled(50 * time.Millisecond)), BootstrapWait: Duration(testenv.Scaled(5 * time.Second)),
			Replicas: ReplicaFunc(func(context.Context) (int, error) { return int(d.desired.Load()), nil })}
	}
	s.boot(nil) // no pod yet
	for i := range max {
		id := fmt.Sprintf("qkd-%d", i)
		s.bind(id, "127.0.0.1:0")
		s.c.Reserve(t, id)
	}
	return d
}

// pod starts node id as a pod would: published in DNS, with its data dir.
func (d *discoverySite) pod(id string) *Node {
	d.t.Helper()
	d.dns.publish(id, d.addrs[id])
	return d.restart(id)
}

// stop stops pod id: gracefully (SIGTERM: Close, which leaves the site when
// scaled down) or as a crash (Kill).
func (d *discoverySite) stop(id string, graceful bool) {
	d.t.Helper()
	if !graceful {
		d.crash(id)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(30*time.Second))
	defer cancel()
	if err := d.c.Stop(ctx, id); err != nil {
		d.t.Errorf("close %s: %v", id, err)
	}
}

// waitVoters waits until every live node is a member and the leader's
// configuration is exactly ids as voters at their addresses.
func (d *discoverySite) waitVoters(ids ...string) {
	d.t.Helper()
	want := make([]string, 0, len(ids))
	for _, id := range ids {
		want = append(want, id+"="+d.addrs[id])
	}
	slices.Sort(want)
	var last []string
	testenv.WaitFor(d.t, fmt.Sprintf("the site's voters to be %v", want), func() bool {
		for _, n := range d.live() {
			if !n.Member() {
				return false
			}
		}
		for _, n := range d.live() {
			if !n.Store().IsLeader() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			ss, err := n.Store().Servers(ctx)
			if err != nil {
				return false
			}
			last = last[:0]
			for _, s := range ss {
				last = append(last, fmt.Sprintf("%s=%s", s.ID, s.Address)+map[bool]string{true: "", false: "(nonvoter)"}[s.Suffrage == 0])
			}
			slices.Sort(last)
			return slices.Equal(last, want)
		}
		return false
	})
	d.leader() // and the live nodes agree on its leader
}

// TestDiscoveryStatefulSet runs the Kubernetes bootstrap logic in process,
// with the fake SRV records a headless Service would publish: ordinal 0
// founds the site, 1 and 2 join; a crashed and a rescheduled pod come back
// with their data as the same members; scaling to 5 adds two voters,
// scaling back to 3 removes them (each leaves at SIGTERM); ordinal 0 that
// lost its volume joins the existing site instead of founding a new one.
func TestDiscoveryStatefulSet(t *testing.T) {
	d := newDiscoverySite(t, 5)
	d.desired.Store(3)

	// First install: the three pods start together (podManagementPolicy
	// Parallel), 1 and 2 possibly before 0.
	for _, id := range []string{"qkd-2", "qkd-1", "qkd-0"} {
		d.pod(id)
	}
	d.waitVoters("qkd-0", "qkd-1", "qkd-2")
	// A write, so that the data has something to keep.
	digest0 := d.write(t)

	// A crashed pod restarts with its volume: it has state at once and
	// stays the same member (no second entry, same address).
	d.stop("qkd-1", false)
	n1 := d.pod("qkd-1")
	if m, err := n1.membership(context.Background()); err != nil || !m.HasState {
		t.Fatalf("qkd-1 restarted with its data dir but has no state: %+v %v", m, err)
	}
	d.waitVoters("qkd-0", "qkd-1", "qkd-2")
	// A rescheduled pod gets SIGTERM while the StatefulSet still wants 3:
	// it does not leave.
	d.stop("qkd-2", true)
	d.pod("qkd-2")
	d.waitVoters("qkd-0", "qkd-1", "qkd-2")
	if got := d.waitDigests(); got != digest0 {
		t.Fatalf("digest after restarts %.12s, want %.12s", got, digest0)
	}

	// Scale 3 → 5: the new pods join as voters.
	d.desired.Store(5)
	d.pod("qkd-3")
	d.pod("qkd-4")
	d.waitVoters("qkd-0", "qkd-1", "qkd-2", "qkd-3", "qkd-4")
	d.waitDigests()

	// Scale 5 → 3: the StatefulSet deletes 4 and 3 (together, Parallel);
	// each leaves at SIGTERM, then disappears from DNS.
	d.desired.Store(3)
	var wg sync.WaitGroup
	for _, id := range []string{"qkd-4", "qkd-3"} {
		wg.Go(func() { d.stop(id, true) })
	}
	wg.Wait()
	d.dns.unpublish("qkd-3")
	d.dns.unpublish("qkd-4")
	d.waitVoters("qkd-0", "qkd-1", "qkd-2")
	digest1 := d.write(t)
	if got := d.waitDigests(); got != digest1 {
		t.Fatalf("digest after scale-down %.12s, want %.12s", got, digest1)
	}

	// Ordinal 0 loses its volume: it finds nodes with state, so it joins
	// (out and in again: it forgot its log) instead of founding a site.
	d.stop("qkd-0", false)
	if err := os.RemoveAll(d.c.Config(d.c.Index("qkd-0")).DataDir); err != nil {
		t.Fatal(err)
	}
	d.pod("qkd-0")
	d.waitVoters("qkd-0", "qkd-1", "qkd-2")
	if got := d.waitDigests(); got != digest1 {
		t.Fatalf("qkd-0 after its volume was lost: digest %.12s, want the site's %.12s", got, digest1)
	}
}

// write registers a connection (a Raft command) on the leader, a new one
// each call, and returns the digest the site converges to.
func (d *discoverySite) write(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(15*time.Second))
	defer cancel()
	d.writes++
	if err := d.leader().Store().RegisterConnection(ctx, raftstore.Connection{
		SourceKME: d.kme, TargetKME: "receiver_app", MasterSAE: fmt.Sprintf("m%d", d.writes), SlaveSAE: "s",
		KeySize: 256, MaxKeyCount: 10, MaxKeyPerRequest: 1, MinKeySize: 64, MaxKeySize: 1024,
	}); err != nil {
		t.Fatal(err)
	}
	return d.waitDigests()
}

func TestNodeOrdinal(t *testing.T) {
	tests := []struct {
		id   string
		want int
		ok   bool
	}{
		{"qkdkms-0", 0, true},
		{"sender-qkdkms-12", 12, true},
		{"a-b-3", 3, true},
		{"qkdkms", 0, false},
		{"qkdkms-", 0, false},
		{"qkdkms-01", 0, false},
		{"qkdkms-+1", 0, false},
		{"qkdkms-x", 0, false},
		{"n1", 0, false},
	}
	for _, tc := range tests {
		got, err := NodeOrdinal(tc.id)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("NodeOrdinal(%q) = %d, %v; want %d, ok %v", tc.id, got, err, tc.want, tc.ok)
		}
	}
}

func TestDiscoveryConfigValidate(t *testing.T) {
	base := Config{NodeID: "qkd-1", KMEID: "kme1", Listen: "0.0.0.0:8443", Advertise: "qkd-1.peers:8443", DataDir: "/d",
		TLS: TLSFiles{CA: "ca", Cert: "c", Key: "k"}, KEKFile: "kek"}
	srv := "_https._tcp.qkd-peers.ns.svc.cluster.local"
	tests := []struct {
		name string
		edit func(*Config)
		want string // "" = valid
	}{
		{"off", func(*Config) {}, ""},
		{"dns", func(c *Config) { c.Discovery = DiscoveryConfig{Mode: "dns", SRV: srv, StatefulSet: "qkd"} }, ""},
		{"unknown mode", func(c *Config) { c.Discovery = DiscoveryConfig{Mode: "k8s", SRV: srv} }, "discovery.mode"},
		{"no srv", func(c *Config) { c.Discovery = DiscoveryConfig{Mode: "dns"} }, "discovery.srv: required"},
		{"srv with port", func(c *Config) { c.Discovery = DiscoveryConfig{Mode: "dns", SRV: "peers:8443"} }, "not a DNS name"},
		{"srv without mode", func(c *Config) { c.Discovery = DiscoveryConfig{SRV: srv} }, "need mode"},
		{"no ordinal", func(c *Config) { c.NodeID = "n1"; c.Discovery = DiscoveryConfig{Mode: "dns", SRV: srv} }, "-<ordinal>"},
		{"with bootstrap", func(c *Config) {
			c.Discovery = DiscoveryConfig{Mode: "dns", SRV: srv}
			c.Bootstrap = map[string]string{"qkd-1": "qkd-1.peers:8443"}
		}, "not both"},
		{"bad statefulset", func(c *Config) { c.Discovery = DiscoveryConfig{Mode: "dns", SRV: srv, StatefulSet: "a/b"} }, "discovery.statefulset"},
		{"tiny retry", func(c *Config) {
			c.Discovery = DiscoveryConfig{Mode: "dns", SRV: srv, RetryInterval: Duration(time.Millisecond)}
		}, "discovery.retry_interval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.edit(&c)
			err := c.WithDefaults().Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want valid: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want an error naming %q, got %v", tc.want, err)
			}
		})
	}
	// The file format: strict decoding knows the section.
	c, err := ParseConfig([]byte(`{"discovery":{"mode":"dns","srv":"` + srv + `","statefulset":"qkd","retry_interval":"1s","bootstrap_wait":"20s"}}`))
	if err != nil || c.Discovery.StatefulSet != "qkd" || c.Discovery.BootstrapWait.D() != 20*time.Second {
		t.Fatalf("parse: %+v %v", c.Discovery, err)
	}
}

// TestKubeScale reads spec.replicas as the Kubernetes API serves it (the
// scale subresource), with the service account's token, CA and namespace.
func TestKubeScale(t *testing.T) {
	var gotPath, gotAuth string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotAuth = r.URL.Path, r.Header.Get("Authorization")
		switch r.URL.Path {
		case "/apis/apps/v1/namespaces/qkd-sender/statefulsets/sender-qkdkms/scale":
			fmt.Fprint(w, `{"kind":"Scale","apiVersion":"autoscaling/v1","spec":{"replicas":3},"status":{"replicas":5}}`)
		case "/apis/apps/v1/namespaces/qkd-sender/statefulsets/empty/scale":
			fmt.Fprint(w, `{"kind":"Scale","spec":{}}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"kind":"Status","reason":"NotFound"}`)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	for name, b := range map[string][]byte{"token": []byte("tok123\n"), "namespace": []byte("qkd-sender"), "ca.crt": ca} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		sts  string
		want int
		err  string
	}{
		{"sender-qkdkms", 3, ""},
		{"gone", 0, "404"},
		{"empty", 0, "no spec.replicas"},
	}
	for _, tc := range tests {
		t.Run(tc.sts, func(t *testing.T) {
			k := &kubeScale{statefulSet: tc.sts, dir: dir, apiBase: srv.URL}
			got, err := k.DesiredReplicas(context.Background())
			if tc.err == "" && (err != nil || got != tc.want) {
				t.Fatalf("got %d, %v; want %d", got, err, tc.want)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("got %d, %v; want an error with %q", got, err, tc.err)
			}
			if gotAuth != "Bearer tok123" {
				t.Errorf("Authorization %q", gotAuth)
			}
			if !strings.HasSuffix(gotPath, "/statefulsets/"+tc.sts+"/scale") {
				t.Errorf("path %q", gotPath)
			}
		})
	}
	// Outside a pod: no service account, an error (the node then stays).
	if _, err := (&kubeScale{statefulSet: "x", dir: t.TempDir(), apiBase: srv.URL}).DesiredReplicas(context.Background()); err == nil {
		t.Fatal("no service account files, but no error")
	}
}
