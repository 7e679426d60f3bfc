package testcluster

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
)

// TestWorkloadLeaderKill runs master/slave SAEs against the two sites,
// kills the master site's leader mid-run, restarts it and checks the
// history: nothing issued twice, every issued key fetched once with equal
// bytes, burned ≤ ambiguous.
func TestWorkloadLeaderKill(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	conn := Connection{SourceKME: c.Sender(), TargetKME: c.Receiver(), MasterSAE: "ghi", SlaveSAE: "jkl",
		KeySize: 256, MaxKeysCount: 5000, MaxKeyPerRequest: 4}
	if err := c.RegisterConnection(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := c.FillPool(ctx, c.Sender(), "ghi", "jkl", 800, 256, 200); err != nil {
		t.Fatal(err)
	}
	burned0 := c.Burned(ctx, c.Sender())
	master, err := c.SAE("ghi", c.Sender())
	if err != nil {
		t.Fatal(err)
	}
	slave, err := c.SAE("jkl", c.Receiver())
	if err != nil {
		t.Fatal(err)
	}
	h := NewHistory()
	// The load runs until the test has seen keys issued before the fault,
	// after the new election and after the restart (Duration only bounds it).
	w := NewWorkload(h, WorkloadOptions{Master: master, Slave: slave, Rate: 20, Number: 2, Duration: time.Minute, NodeOf: c.NodeOf})
	load, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	done := make(chan struct{})
	go func() { defer close(done); w.Run(load) }()
	issued := func() int {
		n := 0
		for _, o := range h.Ops() {
			if o.Kind == OpEnc && o.Outcome == OK {
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
	h.Mark(EventFault, "SIGKILL "+leader)
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
	h.Mark(EventHeal, "restart "+leader)
	moreIssued("with " + leader + " back")
	stopLoad()
	<-done
	if left := w.Drain(ctx, 30*time.Second); left != 0 {
		t.Logf("%d keys still pending after the drain", left)
	}
	h.End = time.Now()
	h.Burned = c.Burned(ctx, c.Sender()) - burned0
	r := Check(h, CheckConfig{})
	t.Logf("\n%s", r.Markdown("leader SIGKILL during enc_keys"))
	if err := h.WriteFile(filepath.Join(t.TempDir(), "history.json")); err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		t.Fatalf("invariant violations: %v", r.Violations)
	}
	if r.ByKind[OpEnc].Successes == 0 || r.KeysFetched == 0 {
		t.Fatalf("no traffic got through: %+v", r.ByKind)
	}
}
