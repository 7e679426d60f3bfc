package workload

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/testcluster/checker"
	"qkdkms/testcluster/harness"
	"qkdkms/testcluster/history"
	"qkdkms/testcluster/internal/proctest"
)

func TestMain(m *testing.M) { proctest.Main(m) }

// startCluster starts two sites of n nodes on free ports with Raft timing
// of 500 ms (stretched by testenv.Scaled), stopping them at the end of the
// test.
func startCluster(t *testing.T, n int) *harness.Cluster {
	t.Helper()
	binary := proctest.Binary(t)
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(60*time.Second))
	defer cancel()
	c, err := harness.Start(ctx, harness.Options{
		Binary: binary, Dir: t.TempDir(), Nodes: n, FreePorts: true, Seed: true,
		HeartbeatTimeout: testenv.Scaled(500 * time.Millisecond).String(), ElectionTimeout: testenv.Scaled(500 * time.Millisecond).String(),
		LeaderLeaseTimeout: testenv.Scaled(250 * time.Millisecond).String(),
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

// TestWorkloadLeaderKill runs master/slave SAEs against the two sites,
// kills the master site's leader mid-run, restarts it and checks the
// history: nothing issued twice, every issued key fetched once with equal
// bytes, burned ≤ ambiguous.
func TestWorkloadLeaderKill(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	conn := harness.Connection{SourceKME: c.Sender(), TargetKME: c.Receiver(), MasterSAE: "ghi", SlaveSAE: "jkl",
		KeySize: 256, MaxKeysCount: 5000, MaxKeyPerRequest: 4}
	if err := c.RegisterConnection(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := c.FillPool(ctx, c.Sender(), "ghi", "jkl", 800, 256, 200); err != nil {
		t.Fatal(err)
	}
	burned0 := c.Burned(ctx, c.Sender())
	master, err := Client(c, "ghi", c.Sender())
	if err != nil {
		t.Fatal(err)
	}
	slave, err := Client(c, "jkl", c.Receiver())
	if err != nil {
		t.Fatal(err)
	}
	h := history.New()
	// The load runs until the test has seen keys issued before the fault,
	// after the new election and after the restart (Duration only bounds it).
	w := New(h, Options{Master: master, Slave: slave, Rate: 20, Number: 2, Duration: time.Minute, NodeOf: c.NodeOf})
	load, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	done := make(chan struct{})
	go func() { defer close(done); w.Run(load) }()
	issued := func() int {
		n := 0
		for _, o := range h.Ops() {
			if o.Kind == history.OpEnc && o.Outcome == history.OK {
				n++
			}
		}
		return n
	}
	moreIssued := func(what string) {
		t.Helper()
		n := issued()
		testenv.WaitFor(t, "keys issued "+what, func() bool { return issued() > n })
	}

	moreIssued("before the fault")
	leader, err := c.Leader(ctx, c.Sender())
	if err != nil {
		t.Fatal(err)
	}
	h.Mark(history.EventFault, "SIGKILL "+leader)
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(ctx, c.Sender(), leader); err != nil {
		t.Fatal(err)
	}
	moreIssued("by the new leader")
	if err := c.StartNode(leader); err != nil {
		t.Fatal(err)
	}
	h.Mark(history.EventHeal, "restart "+leader)
	moreIssued("with " + leader + " back")
	stopLoad()
	<-done
	if left := w.Drain(ctx, 30*time.Second); left != 0 {
		t.Logf("%d keys still pending after the drain", left)
	}
	h.End = time.Now()
	h.Burned = c.Burned(ctx, c.Sender()) - burned0
	r := checker.Check(h, checker.Config{})
	t.Logf("\n%s", r.Markdown("leader SIGKILL during enc_keys"))
	if err := h.WriteFile(filepath.Join(t.TempDir(), "history.json")); err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		t.Fatalf("invariant violations: %v", r.Violations)
	}
	if r.ByKind[history.OpEnc].Successes == 0 || r.KeysFetched == 0 {
		t.Fatalf("no traffic got through: %+v", r.ByKind)
	}
}
