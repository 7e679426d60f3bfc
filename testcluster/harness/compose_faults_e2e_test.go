//go:build e2e

package harness_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/testcluster/checker"
	"qkdkms/testcluster/faults"
	"qkdkms/testcluster/harness"
	"qkdkms/testcluster/history"
	"qkdkms/testcluster/workload"
)

// TestComposeLeaderIsolation brings the docker-compose deployment up (after
// TestComposeSeedWorkflow has taken its own run down: tests run one after
// the other) with the seed API opted in (SeedOverride: RegisterConnection
// uses it), registers a connection between two SAEs of its own, waits for
// the QKD link to fill the pool, and runs an SAE workload against the
// published ports while the master site's leader is cut off from the compose
// network for 8 s (`docker network disconnect`). After reconnecting it
// drains, checks the history and takes the deployment down. Set
// TESTCLUSTER_COMPOSE=1 to run it.
func TestComposeLeaderIsolation(t *testing.T) {
	if os.Getenv("TESTCLUSTER_COMPOSE") == "" {
		t.Skip("set TESTCLUSTER_COMPOSE=1 (needs docker-compose and bin/qkdkms)")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("SKIPPED: no Docker engine reachable (%v: %s); the compose deployment was not tested", err, out)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	upCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	d, err := harness.ComposeUp(upCtx, harness.ComposeOptions{Root: root, Overrides: []string{harness.SeedOverride}})
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer dcancel()
		if d != nil {
			if t.Failed() {
				t.Logf("compose logs:\n%s", d.Logs(dctx, 30))
			}
			if err := d.Down(dctx); err != nil {
				t.Errorf("down: %v", err)
			}
			return
		}
		_ = harness.ComposeDown(dctx, harness.ComposeOptions{Root: root, Overrides: []string{harness.SeedOverride}})
	})
	if err != nil {
		t.Fatal(err)
	}
	c := d.C
	t.Logf("attached: network %s, sender nodes %v, receiver nodes %v", d.Network, c.Layout.Site(c.Sender()).Addrs(), c.Layout.Site(c.Receiver()).Addrs())

	// SAEs of this test only: the seed workflow's ghi→jkl connection (8-bit
	// keys, 10 at most) persists in .deploy across runs.
	const master, slave = "mno", "pqr"
	for _, s := range []string{master, slave} {
		if err := d.IssueSAE(s); err != nil {
			t.Fatal(err)
		}
	}
	const (
		keyBits  = 256
		rate     = 10.0
		duration = 22 * time.Second
		window   = 30 * time.Second
	)
	need := int(rate*duration.Seconds()) + 20
	setup, scancel := context.WithTimeout(ctx, 4*time.Minute)
	defer scancel()
	if err := c.RegisterConnection(setup, harness.Connection{SourceKME: c.Sender(), TargetKME: c.Receiver(), MasterSAE: master, SlaveSAE: slave,
		KeySize: keyBits, MaxKeysCount: 4 * need, MaxKeyPerRequest: 4}); err != nil {
		t.Fatal(err)
	}
	// The pool is filled by the QKD link only (admin import is refused on
	// linked sites): wait until it holds the whole run's keys.
	t0 := time.Now()
	testenv.WaitWithin(t, fmt.Sprintf("%d keys in the pool", need), 4*time.Minute, func() bool {
		st, err := c.Status(setup, c.Sender(), master, slave)
		return err == nil && st.StoredKeyCount >= need
	})
	t.Logf("pool holds %d keys of %d bits after %v", need, keyBits, time.Since(t0).Round(time.Second))
	burned0 := c.Burned(setup, c.Sender())

	mc, err := workload.Client(c, master, c.Sender())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := workload.Client(c, slave, c.Receiver())
	if err != nil {
		t.Fatal(err)
	}
	h := history.New()
	w := workload.New(h, workload.Options{Master: mc, Slave: sc, Rate: rate, Number: 1, Duration: duration, NodeOf: c.NodeOf})

	var (
		fwg               sync.WaitGroup
		oldLeader, newLdr string
		faultErr          error
	)
	wctx, wcancel := context.WithTimeout(ctx, duration)
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		faults.Sleep(wctx, 4*time.Second)
		lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
		defer lcancel()
		if oldLeader, faultErr = c.WaitLeader(lctx, c.Sender()); faultErr != nil {
			return
		}
		h.Mark(history.EventFault, "network disconnect "+oldLeader)
		if faultErr = d.Isolate(ctx, oldLeader); faultErr != nil {
			return
		}
		isolated := time.Now()
		ectx, ecancel := context.WithTimeout(ctx, 8*time.Second)
		newLdr, _ = c.WaitLeader(ectx, c.Sender(), oldLeader)
		ecancel()
		t.Logf("isolated %s; new leader %q after %v", oldLeader, newLdr, time.Since(isolated).Round(time.Millisecond))
		faults.Sleep(ctx, time.Until(isolated.Add(8*time.Second)))
		faultErr = d.Reconnect(ctx, oldLeader)
		h.Mark(history.EventHeal, "network connect "+oldLeader)
	}()
	w.Run(wctx)
	wcancel()
	fwg.Wait()
	if faultErr != nil {
		t.Fatalf("fault: %v", faultErr)
	}
	hctx, hcancel := context.WithTimeout(ctx, 60*time.Second)
	if err := d.Heal(hctx); err != nil {
		t.Error(err)
	}
	if err := c.WaitLeaders(hctx); err != nil {
		t.Errorf("after healing: %v", err)
	}
	hcancel()
	left := w.Drain(ctx, window)
	h.End = time.Now()
	if b := c.Burned(ctx, c.Sender()); b >= 0 && burned0 >= 0 {
		h.Burned = b - burned0
	}
	r := checker.Check(h, checker.Config{FetchWindow: window})
	js, _ := json.MarshalIndent(r, "", "  ")
	t.Logf("checker report (pending after drain %d):\n%s", left, js)

	if newLdr == "" || newLdr == oldLeader {
		t.Errorf("no new leader elected while %s was isolated (got %q)", oldLeader, newLdr)
	}
	for _, v := range []struct {
		name string
		n    int
	}{
		{"double-issued", r.DoubleIssued}, {"duplicate key bytes", r.DuplicateKeyBytes},
		{"second fetches", r.SecondFetch}, {"byte mismatches", r.ByteMismatch},
		{"dec_keys never issued", r.DecNeverIssued}, {"not fetchable after healing", r.NotFetchable},
	} {
		if v.n != 0 {
			t.Errorf("%s: %d", v.name, v.n)
		}
	}
	if r.ExcessBurned != 0 || r.Burned > int64(r.BurnAllowance) {
		t.Errorf("burned %d > allowance %d", r.Burned, r.BurnAllowance)
	}
	if r.ByKind[history.OpEnc].Successes == 0 || r.KeysFetched == 0 {
		t.Errorf("no traffic went through: %+v", r.ByKind)
	}
	if len(r.Violations) > 0 {
		t.Errorf("violations: %v", r.Violations)
	}

	// The other container faults, on a follower of the slave site: pause and
	// unpause, kill and start; the site is whole and ready again afterwards.
	fctx, fcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer fcancel()
	l, err := c.WaitLeader(fctx, c.Receiver())
	if err != nil {
		t.Fatal(err)
	}
	var f string
	for _, id := range c.Nodes(c.Receiver()) {
		if id != l {
			f = id
			break
		}
	}
	expect := func(step string, wantRunning, wantPaused bool) {
		t.Helper()
		running, paused, err := d.ContainerState(fctx, f)
		if err != nil || running != wantRunning || paused != wantPaused {
			t.Errorf("after %s %s: running %v paused %v (%v), want %v %v", step, f, running, paused, err, wantRunning, wantPaused)
		}
	}
	if err := d.Pause(fctx, f); err != nil {
		t.Fatal(err)
	}
	expect("pause", true, true)
	if got, err := c.Leader(fctx, c.Receiver()); err != nil || got == f {
		t.Errorf("leader with %s paused: %q %v", f, got, err)
	}
	if err := d.Unpause(fctx, f); err != nil {
		t.Fatal(err)
	}
	expect("unpause", true, false)
	if err := d.Kill(fctx, f); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the restart policy must leave a killed node down
	expect("kill", false, false)
	if c.Running(f) {
		t.Errorf("cluster reports killed %s running", f)
	}
	if err := d.StartNode(fctx, f); err != nil {
		t.Fatal(err)
	}
	expect("start", true, false)
	if err := c.WaitLeaders(fctx); err != nil {
		t.Errorf("after restarting %s: %v", f, err)
	}
}
