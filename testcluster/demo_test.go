package testcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/testenv"
	"strings"
	"sync"
	"testing"
	"time"
)

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

// TestDemoRunsTwice starts the demo on free ports, waits for its status
// block naming a leader for each site, stops it with ctx, and runs it again
// on the same directory: PKI, KEKs and data are reused.
func TestDemoRunsTwice(t *testing.T) {
	needBinary(t)
	dir := t.TempDir()
	// The ports stay bound until the first run's nodes take them over.
	var lns []*net.TCPListener
	reserve := func(n int) int {
		run, err := reserveRun(n)
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, run...)
		return port(run[0])
	}
	sp, rp := reserve(3), reserve(3)
	seeds := []int{reserve(1), reserve(1)}
	t.Cleanup(func() {
		for _, l := range lns {
			l.Close()
		}
	})
	plugins, err := pluginbuild.Dir()
	if err != nil {
		t.Fatal(err)
	}
	// As `make run`: the sites joined by a QKD link running the WASM plugins.
	opts := DemoOptions{Binary: binary, Dir: dir, SenderPort: sp, ReceiverPort: rp,
		SenderSeedPort: seeds[0], ReceiverSeedPort: seeds[1], Refresh: 200 * time.Millisecond, Plain: true,
		Link: &LinkSpec{PluginDir: plugins}}
	var caBefore []byte
	for run := 1; run <= 2; run++ {
		out := &syncBuffer{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		opts.Listeners = nil // the second run binds the ports again, as a restart does
		if run == 1 {
			opts.Listeners = lns
		}
		go func() { done <- Demo(ctx, opts, out) }()
		ended := false
		t.Cleanup(func() { // a failed wait leaves no node running
			if !ended {
				cancel()
				<-done
				t.Logf("run %d output:\n%s", run, out.String())
			}
		})
		// The second run must show the connection (and its pool) the first
		// run registered: the data survived the restart.
		want := "site receiver_app   leader receiver_app-"
		if run == 2 {
			want = "ghi→jkl"
		}
		testenv.WaitFor(t, fmt.Sprintf("run %d: leaders on the status screen", run), func() bool {
			select {
			case err := <-done:
				ended = true
				t.Fatalf("run %d: demo ended early: %v\n%s", run, err, out.String())
			default:
			}
			return strings.Contains(out.String(), "site sender_app     leader sender_app-") && strings.Contains(out.String(), want)
		})
		if run == 1 {
			seedWorkflow(t, seeds[0], seeds[1])
		}
		cancel()
		ended = true
		if err := <-done; err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		s := out.String()
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

// seedWorkflow runs the seed README's three curl lines (as HTTP requests,
// same methods, bodies and headers) against the demo: register, get a key
// at the master side, fetch it by ID at the slave side; the bytes match.
func seedWorkflow(t *testing.T, senderPort, receiverPort int) {
	seedWorkflowWith(t, senderPort, receiverPort, nil)
}

// seedWorkflowWith calls fill (when not nil) once after registering, for
// deployments that need a stand-in for key generation.
func seedWorkflowWith(t *testing.T, senderPort, receiverPort int, fill func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	post := func(url, ctype, body string) (int, map[string]any) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		// curl --data sets this Content-Type unless --header overrides it.
		req.Header.Set("Content-Type", ctype)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	code, m := post(fmt.Sprintf("http://localhost:%d/register_connection", senderPort), "application/json", `{
  "source_KME_ID": "sender_app",
  "target_KME_ID": "receiver_app",
  "master_SAE_ID": "ghi",
  "slave_SAE_ID": "jkl",
  "key_size": 8,
  "max_keys_count": 10,
  "max_key_per_request": 1,
  "max_SAE_ID_count": 0

}`)
	if code != http.StatusOK {
		t.Fatalf("register_connection: %d %v", code, m)
	}
	if fill != nil {
		fill()
	}
	// Keys arrive from the QKD link; get_key answers 503 until they have.
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var master map[string]any
	testenv.WaitFor(t, "a key from master get_key", func() bool {
		code, master = post(fmt.Sprintf("http://127.0.0.1:%d/get_key?slave_host=jkl", senderPort), "application/x-www-form-urlencoded", "")
		if code != http.StatusOK && code != http.StatusServiceUnavailable {
			t.Fatalf("master get_key: %d %v", code, master)
		}
		return code == http.StatusOK
	})
	id, _ := master["key_id"].(string)
	code, slave := post(fmt.Sprintf("http://127.0.0.1:%d/get_key?key_id=%s", receiverPort, id), "application/x-www-form-urlencoded", "")
	if code != http.StatusOK {
		t.Fatalf("slave get_key: %d %v", code, slave)
	}
	if slave["key_id"] != id || slave["key_data"] != master["key_data"] || master["key_data"] == "" {
		t.Fatalf("slave got %v, master got %v", slave, master)
	}
	t.Logf("seed workflow: key %s = %v at both sites", id, master["key_data"])
}
