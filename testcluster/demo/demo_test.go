package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/testenv"
	"qkdkms/testcluster/harness"
	"qkdkms/testcluster/internal/proctest"
)

func TestMain(m *testing.M) { proctest.Main(m) }

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ports reserves bound listeners for a demo's nodes, handed over through
// DemoOptions.Listeners; what no node took is closed when the test ends.
type ports struct {
	t   *testing.T
	lns []*net.TCPListener
}

func newPorts(t *testing.T) *ports {
	p := &ports{t: t}
	t.Cleanup(func() {
		for _, l := range p.lns {
			l.Close()
		}
	})
	return p
}

// run reserves n consecutive ports and returns the first.
func (p *ports) run(n int) int {
	run, err := harness.ReserveRun(n)
	if err != nil {
		p.t.Fatal(err)
	}
	p.lns = append(p.lns, run...)
	return run[0].Addr().(*net.TCPAddr).Port
}

// demoRun is a Demo running in the background until stop, or until the
// test ends (a failed wait leaves no node running; the output is logged).
type demoRun struct {
	t      *testing.T
	out    *syncBuffer
	cancel context.CancelFunc
	done   chan error
	ended  bool
}

func startDemo(t *testing.T, opts DemoOptions) *demoRun {
	ctx, cancel := context.WithCancel(context.Background())
	d := &demoRun{t: t, out: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() { d.done <- Demo(ctx, opts, d.out) }()
	t.Cleanup(func() {
		if !d.ended {
			cancel()
			<-d.done
			t.Logf("output:\n%s", d.out.String())
		}
	})
	return d
}

// waitFor waits until the output satisfies ok; the demo ending first fails.
func (d *demoRun) waitFor(what string, ok func(out string) bool) {
	d.t.Helper()
	testenv.WaitFor(d.t, what, func() bool {
		select {
		case err := <-d.done:
			d.ended = true
			d.t.Fatalf("%s: demo ended early: %v\n%s", what, err, d.out.String())
		default:
		}
		return ok(d.out.String())
	})
}

// stop stops the demo, which must end cleanly, and returns its output.
func (d *demoRun) stop() string {
	d.t.Helper()
	d.cancel()
	d.ended = true
	if err := <-d.done; err != nil {
		d.t.Fatal(err)
	}
	return d.out.String()
}

// TestDemoRunsTwice starts the demo on free ports, waits for its status
// block naming a leader for each site, stops it with ctx, and runs it again
// on the same directory: PKI, KEKs and data are reused.
func TestDemoRunsTwice(t *testing.T) {
	binary := proctest.Binary(t)
	dir := t.TempDir()
	// The ports stay bound until the first run's nodes take them over.
	ps := newPorts(t)
	sp, rp := ps.run(3), ps.run(3)
	seeds := []int{ps.run(1), ps.run(1)}
	plugins, err := pluginbuild.Dir()
	if err != nil {
		t.Fatal(err)
	}
	// As `make run`: the sites joined by a QKD link running the WASM plugins.
	opts := DemoOptions{Binary: binary, Dir: dir, SenderPort: sp, ReceiverPort: rp,
		SenderSeedPort: seeds[0], ReceiverSeedPort: seeds[1], Refresh: 200 * time.Millisecond, Plain: true,
		Link: &harness.LinkSpec{PluginDir: plugins}}
	var caBefore []byte
	for run := 1; run <= 2; run++ {
		opts.Listeners = nil // the second run binds the ports again, as a restart does
		if run == 1 {
			opts.Listeners = ps.lns
		}
		d := startDemo(t, opts)
		// The second run must show the connection (and its pool) the first
		// run registered: the data survived the restart.
		want := "site receiver_app   leader receiver_app-"
		if run == 2 {
			want = "ghi→jkl"
		}
		d.waitFor(fmt.Sprintf("run %d: leaders on the status screen", run), func(out string) bool {
			return strings.Contains(out, "site sender_app     leader sender_app-") && strings.Contains(out, want)
		})
		if run == 1 {
			proctest.SeedWorkflow(t, seeds[0], seeds[1], nil)
		}
		s := d.stop()
		t.Logf("run %d output:\n%s", run, s)
		for _, want := range []string{"get_key?slave_host=jkl", "/api/v1/keys/jkl/enc_keys", "ghi.crt", "stopped; data kept"} {
			if !strings.Contains(s, want) {
				t.Errorf("run %d: output lacks %q", run, want)
			}
		}
		ca, err := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		if run == 1 {
			caBefore = ca
		} else if !bytes.Equal(ca, caBefore) {
			t.Fatal("second run replaced the CA")
		}
		for _, f := range []string{"pki/ghi.crt", "pki/jkl.key", "kek/sender_app.kek", "data/sender_app-1", "data/receiver_app-3"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("run %d: %v", run, err)
			}
		}
	}
}

// TestDemoDrivers: `qkdkms demo --driver devstream|etsi014` starts the
// devices in process, points the two sites at them, and the status screen
// shows the link's driver, healthy, with sessions committed.
func TestDemoDrivers(t *testing.T) {
	binary := proctest.Binary(t)
	for _, driver := range []string{"devstream", "etsi014"} {
		t.Run(driver, func(t *testing.T) {
			ps := newPorts(t)
			sp, rp := ps.run(3), ps.run(3)
			seed := ps.run(1)
			opts := DemoOptions{Binary: binary, Dir: t.TempDir(), SenderPort: sp, ReceiverPort: rp,
				SenderSeedPort: seed, ReceiverSeedPort: ps.run(1),
				Refresh: 200 * time.Millisecond, Plain: true, Link: &harness.LinkSpec{Native: true}, Driver: driver}
			opts.Listeners = ps.lns
			d := startDemo(t, opts)
			d.waitFor("leaders on the status screen", func(out string) bool {
				return strings.Contains(out, "site sender_app     leader sender_app-") &&
					strings.Contains(out, "site receiver_app   leader receiver_app-")
			})
			// The link runs sessions once a connection gives them a pool.
			body := `{"source_KME_ID":"sender_app","target_KME_ID":"receiver_app","master_SAE_ID":"ghi","slave_SAE_ID":"jkl",` +
				`"key_size":256,"max_keys_count":100000,"max_key_per_request":1,"max_SAE_ID_count":0}`
			testenv.WaitFor(t, "register_connection through the seed API", func() bool {
				resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/register_connection", seed), "application/json", strings.NewReader(body))
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			})
			want := "driver " + driver + " ok): "
			d.waitFor("the status screen to show "+want+" with a session committed", func(out string) bool {
				for _, line := range strings.Split(out, "\n") {
					if strings.Contains(line, want) && !strings.Contains(line, ":   0 sessions ok") {
						return true
					}
				}
				return false
			})
			if s := d.stop(); !strings.Contains(s, "link driver "+driver+": receiver_app plays Alice") {
				t.Fatalf("output lacks the driver line:\n%s", s)
			}
		})
	}
}

// TestDemoSites: --sites N names the sites sender_app, relay1_app, …,
// receiver_app, gives site k ≥ 3 the ports after the second site's
// (10443, 11443, …; seed 8002, 8003, …), and the commands to try join an
// SAE at the first site to one at the last. No process runs.
func TestDemoSites(t *testing.T) {
	for _, tc := range []struct {
		n        int
		topology string
		ids      []string
		relayed  bool // first and last site share no QKD link
		topoLine string
	}{
		{2, "", []string{"sender_app", "receiver_app"}, false, ""},
		{3, harness.TopologyLine, []string{"sender_app", "relay1_app", "receiver_app"}, true,
			"QKD links (line): sender_app ═ relay1_app ═ receiver_app"},
		{4, harness.TopologyRing, []string{"sender_app", "relay1_app", "relay2_app", "receiver_app"}, false,
			"QKD links (ring): sender_app ═ relay1_app ═ relay2_app ═ receiver_app ═ sender_app"},
	} {
		t.Run(fmt.Sprint(tc.n, tc.topology), func(t *testing.T) {
			ho, err := clusterOptions(DemoOptions{Binary: "qkdkms", Dir: t.TempDir(), Sites: tc.n, Topology: tc.topology,
				SenderSeedPort: 8000, ReceiverSeedPort: 8001, Link: &harness.LinkSpec{Native: true}})
			if err != nil {
				t.Fatal(err)
			}
			c, err := harness.New(ho)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Sites(); strings.Join(got, " ") != strings.Join(tc.ids, " ") {
				t.Fatalf("sites %v, want %v", got, tc.ids)
			}
			for i, id := range tc.ids {
				s := c.Layout.Site(id)
				if want := fmt.Sprintf("127.0.0.1:%d", 8443+1000*i); s.Nodes[0].Addr() != want {
					t.Errorf("site %s: node 1 at %s, want %s", id, s.Nodes[0].Addr(), want)
				}
				if want := fmt.Sprintf("127.0.0.1:%d", 8000+i); s.SeedAddr != want {
					t.Errorf("site %s: seed API at %s, want %s", id, s.SeedAddr, want)
				}
			}
			out := (&demoScreen{c: c}).commands()
			last := len(tc.ids) - 1
			for _, want := range []string{
				`"source_KME_ID": "sender_app", "target_KME_ID": "receiver_app", "master_SAE_ID": "ghi", "slave_SAE_ID": "jkl"`,
				"http://localhost:8000/register_connection",
				"http://127.0.0.1:8000/get_key?slave_host=jkl",
				fmt.Sprintf("http://127.0.0.1:%d/get_key?key_id=KEY_ID", 8000+last),
				"https://127.0.0.1:8443/api/v1/keys/jkl/status",
				fmt.Sprintf("https://127.0.0.1:%d/api/v1/keys/ghi/dec_keys", 8443+1000*last),
				tc.topoLine,
			} {
				if !strings.Contains(out, want) {
					t.Errorf("commands lack %q:\n%s", want, out)
				}
			}
			if got := strings.Contains(out, "share no QKD link: trusted nodes relay their keys"); got != tc.relayed {
				t.Errorf("relay note shown %v, want %v:\n%s", got, tc.relayed, out)
			}
		})
	}
	// Refused before any node starts.
	for _, o := range []DemoOptions{
		{Sites: 1},
		{Sites: 2, Topology: harness.TopologyRing},
		{Sites: 3, Driver: "devstream", Link: &harness.LinkSpec{Native: true}},
	} {
		o.Binary, o.Dir = "qkdkms", t.TempDir()
		if err := Demo(context.Background(), o, io.Discard); err == nil {
			t.Errorf("Demo(sites %d, topology %q, driver %q) started", o.Sites, o.Topology, o.Driver)
		}
	}
}

// TestDemoThreeSites: `qkdkms demo --sites 3` starts three sites of three
// node processes in a line and its status screen shows a leader for each,
// and the QKD links, until stopped.
func TestDemoThreeSites(t *testing.T) {
	binary := proctest.Binary(t)
	ps := newPorts(t)
	sitePorts := []int{ps.run(3), ps.run(3), ps.run(3)}
	seeds := []int{ps.run(1), ps.run(1), ps.run(1)}
	opts := DemoOptions{Binary: binary, Dir: t.TempDir(), Sites: 3, Ports: sitePorts, SeedPorts: seeds, Listeners: ps.lns,
		SenderSeedPort: seeds[0], ReceiverSeedPort: seeds[1],
		Refresh: 200 * time.Millisecond, Plain: true, Link: &harness.LinkSpec{Native: true}}
	d := startDemo(t, opts)
	d.waitFor("a leader for each of the three sites on the status screen", func(out string) bool {
		for _, site := range []string{"sender_app", "relay1_app", "receiver_app"} {
			if !strings.Contains(out, fmt.Sprintf("site %-14s leader %s-", site, site)) {
				return false
			}
		}
		return true
	})
	s := d.stop()
	for _, want := range []string{
		"QKD links (line): sender_app ═ relay1_app ═ receiver_app",
		fmt.Sprintf("http://127.0.0.1:%d/get_key?key_id=KEY_ID", seeds[2]),
		"stopped; data kept",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}
