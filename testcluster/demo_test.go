package testcluster

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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
	sp, err := freeRun(3)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := freeRunExcept(3, sp, 3)
	if err != nil {
		t.Fatal(err)
	}
	seeds, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	opts := DemoOptions{Binary: binary, Dir: dir, SenderPort: sp, ReceiverPort: rp,
		SenderSeedPort: seeds[0], ReceiverSeedPort: seeds[1], Refresh: 200 * time.Millisecond, Plain: true}
	var caBefore []byte
	for run := 1; run <= 2; run++ {
		out := &syncBuffer{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Demo(ctx, opts, out) }()
		deadline := time.After(60 * time.Second)
		for !(strings.Contains(out.String(), "site sender_app     leader sender_app-") &&
			strings.Contains(out.String(), "site receiver_app   leader receiver_app-")) {
			select {
			case err := <-done:
				cancel()
				t.Fatalf("run %d: demo ended early: %v\n%s", run, err, out.String())
			case <-deadline:
				cancel()
				<-done
				t.Fatalf("run %d: no leaders on the status screen:\n%s", run, out.String())
			case <-time.After(100 * time.Millisecond):
			}
		}
		cancel()
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
