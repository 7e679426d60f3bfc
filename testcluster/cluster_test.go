package testcluster

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
)

// binary is bin/qkdkms built by TestMain for the process tests ("" when
// the tests run with -short or the build failed).
var (
	binary   string
	buildErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if !testing.Short() && os.Getenv("TESTCLUSTER_SKIP_BUILD") == "" {
			dir, err := os.MkdirTemp("", "testcluster-bin-")
			if err != nil {
				buildErr = err
			} else {
				defer os.RemoveAll(dir)
				binary = filepath.Join(dir, "qkdkms")
				cmd := exec.Command("go", "build", "-o", binary, "qkdkms/node/cmd/qkdkms")
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
				if out, err := cmd.CombinedOutput(); err != nil {
					buildErr = fmt.Errorf("go build: %w\n%s", err, out)
				}
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

func needBinary(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("process cluster test: skipped with -short")
	}
	if buildErr != nil {
		t.Fatalf("build qkdkms: %v", buildErr)
	}
}

// startCluster starts two sites of n nodes on free ports with fast Raft
// timing, stopping them at the end of the test.
func startCluster(t *testing.T, n int) *Cluster {
	t.Helper()
	needBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{
		Binary: binary, Dir: t.TempDir(), Nodes: n, FreePorts: true, Seed: true,
		HeartbeatTimeout: "500ms", ElectionTimeout: "500ms", LeaderLeaseTimeout: "250ms",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.StopAll()
		if t.Failed() {
			t.Log(c.TailLogs(30))
		}
	})
	return c
}

func TestClusterLeaderKill(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leaders := map[string]string{}
	for _, site := range []string{c.Sender(), c.Receiver()} {
		l, err := c.Leader(ctx, site)
		if err != nil {
			t.Fatal(err)
		}
		leaders[site] = l
		t.Logf("site %s: leader %s", site, l)
	}
	old := leaders[c.Sender()]
	killed := time.Now()
	if err := c.Kill(old); err != nil {
		t.Fatal(err)
	}
	if c.Running(old) {
		t.Fatalf("%s still running after SIGKILL", old)
	}
	nl, err := c.WaitLeader(ctx, c.Sender(), old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("new leader %s after %v", nl, time.Since(killed).Round(time.Millisecond))
	if nl == old {
		t.Fatalf("leader still %s", old)
	}
	// The other site is untouched.
	if l, err := c.Leader(ctx, c.Receiver()); err != nil || l != leaders[c.Receiver()] {
		t.Fatalf("receiver leader %q (%v), want %q", l, err, leaders[c.Receiver()])
	}
	// The killed node comes back with its data and the site has all three
	// nodes ready again.
	if err := c.Restart(old); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.Ready(ctx, old) {
		t.Fatalf("%s not ready after restart", old)
	}
}

func TestClusterStopCont(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	old, err := c.Leader(ctx, c.Receiver())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(old); err != nil {
		t.Fatal(err)
	}
	nl, err := c.WaitLeader(ctx, c.Receiver(), old)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Cont(old); err != nil {
		t.Fatal(err)
	}
	// The old leader steps down once it hears the new term.
	if err := c.WaitLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := c.WaitLeader(ctx, c.Receiver())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped %s, new leader %s, leader after SIGCONT %s", old, nl, l)
}

// TestClusterNetnsIsolate runs the nodes in network namespaces, cuts the
// master site's leader off from its site (clients still reach it), sees a
// new leader elected by the majority, heals, and sees one leader again.
func TestClusterNetnsIsolate(t *testing.T) {
	needBinary(t)
	if !NetnsAvailable() {
		t.Skip("network namespaces need root, ip and iptables")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{Binary: binary, Dir: t.TempDir(), Netns: true, Seed: true,
		HeartbeatTimeout: "500ms", ElectionTimeout: "500ms", LeaderLeaseTimeout: "250ms"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.StopAll()
		if t.Failed() {
			t.Log(c.TailLogs(30))
		}
	})
	old, err := c.Leader(ctx, c.Sender())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Isolate(old); err != nil {
		t.Fatal(err)
	}
	nl, err := c.WaitLeader(ctx, c.Sender(), old)
	if err != nil {
		t.Fatal(err)
	}
	// The isolated node is still reachable by clients but not ready.
	testenv.WaitFor(t, "isolated "+old+" to report not ready", func() bool { return !c.Ready(ctx, old) })
	if err := c.Heal(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := c.WaitLeader(ctx, c.Sender())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("isolated %s, majority elected %s, leader after healing %s", old, nl, l)
}
