package harness

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/testcluster/internal/proctest"
)

func TestMain(m *testing.M) { proctest.Main(m) }

// startCluster starts the cluster o describes, with the qkdkms binary, a
// temporary directory and fast Raft timing, and stops it at the end of the
// test (logging the nodes' last lines if it failed).
func startCluster(t *testing.T, ctx context.Context, o Options) *Cluster {
	t.Helper()
	o.Binary, o.Dir = proctest.Binary(t), t.TempDir()
	o.HeartbeatTimeout, o.ElectionTimeout, o.LeaderLeaseTimeout = "500ms", "500ms", "250ms"
	c, err := Start(ctx, o)
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startCluster(t, ctx, Options{Nodes: 3, FreePorts: true, Seed: true})
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startCluster(t, ctx, Options{Nodes: 3, FreePorts: true, Seed: true})
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
	if !NetnsAvailable() {
		t.Skip("network namespaces need root, ip and iptables")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := startCluster(t, ctx, Options{Netns: true, Seed: true})
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

// TestClusterThreeSitesLine starts three sites of three node processes in
// a line (a–b–c: QKD links a–b and b–c, none a–c) with the seed API, finds
// each site's leader, checks that each leader runs QKD links to its
// neighbours only, and registers a connection between the first two sites,
// whose pool fills from their direct link.
func TestClusterThreeSitesLine(t *testing.T) {
	sites := []string{"a_app", "b_app", "c_app"}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(2*time.Minute))
	defer cancel()
	c := startCluster(t, ctx, Options{Sites: sites, Topology: TopologyLine, FreePorts: true, Seed: true,
		Link: &LinkSpec{Native: true, FiberKm: 1, RelayPoolBytes: 1024, RelayShare: 0.5}})
	for _, site := range sites {
		l, err := c.WaitLeader(ctx, site)
		if err != nil {
			t.Fatal(err)
		}
		want := c.Layout.Neighbours(site)
		testenv.WaitFor(t, fmt.Sprintf("%s (leader %s) to run QKD links to exactly %v", site, l, want), func() bool {
			st, err := c.LinkStatuses(ctx, l)
			if err != nil {
				return false
			}
			var peers []string
			for _, s := range st {
				peers = append(peers, s.Peer)
			}
			slices.Sort(peers)
			return slices.Equal(peers, want)
		})
		t.Logf("site %s: leader %s, links to %v", site, l, want)
	}
	conn := Connection{SourceKME: sites[0], TargetKME: sites[1], MasterSAE: "ghi", SlaveSAE: "jkl",
		KeySize: 256, MaxKeysCount: 1000, MaxKeyPerRequest: 1}
	if err := c.RegisterConnection(ctx, conn); err != nil {
		t.Fatal(err)
	}
	// The master SAE sees the pool through ETSI status; the slave site's
	// leader reports its copy of the pool in its metrics.
	testenv.WaitFor(t, "keys in the pool of ghi→jkl at both ends of the a–b link", func() bool {
		st, err := c.Status(ctx, sites[0], "ghi", "jkl")
		if err != nil || st.StoredKeyCount < 4 {
			return false
		}
		l, err := c.Leader(ctx, sites[1])
		if err != nil {
			return false
		}
		m, err := c.Metrics(ctx, l)
		return err == nil && m[`qkdkms_pool_stored_keys{master="ghi",slave="jkl"}`] >= 4
	})
}
