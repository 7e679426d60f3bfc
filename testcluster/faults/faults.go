// Package faults is the failpoints of the failover experiments, as etcd's
// robustness tests have theirs: each Scenario is a named fault run during
// a workload (kill, SIGSTOP, isolation by network namespace, a cut link
// between the sites, a full disk, a whole-site restart) that marks its
// start and its healing in the history. The mechanisms are the harness's
// (Cluster.Kill, Stop, Isolate, CutLink, FillDisk ...); this package
// decides what to break, when, and for how long. README, "Failover
// experiments", lists what a run checks afterwards.
package faults

import (
	"context"
	"fmt"
	"sort"
	"time"

	"qkdkms/quantum/etsi014"
	"qkdkms/testcluster/harness"
	"qkdkms/testcluster/history"
)

// Env is what a scenario's fault function works with.
type Env struct {
	C *harness.Cluster
	H *history.History
	// Site is the site the fault targets (the master site unless the
	// scenario says otherwise).
	Site string
	// Devices are the QKD link's devices (scenarios with a Driver).
	Devices *harness.Devices
	// Sites are the network scenario's sites in topology order
	// (NetworkSites; scenarios with Sites).
	Sites []string
}

// Scenario is a named fault run during a workload. Fault runs alongside the
// workload and must return (healed) before ctx ends; it records EventFault
// and EventHeal marks in the history.
type Scenario struct {
	Name        string
	Description string
	// Slave targets the slave site instead of the master site.
	Slave bool
	// Netns and DiskMB: the scenario needs network namespaces or tmpfs data
	// directories of that size (root only).
	Netns  bool
	DiskMB int
	// Driver, when set, joins the sites by a QKD link with this driver
	// (sim, devstream, etsi014; harness.StartDevices) and the pools fill
	// from the link alone instead of by admin import; the checker then
	// also checks the link (checker.CheckLink).
	Driver string
	// Sites, when 3 or more, runs the scenario on that many sites joined
	// by simulated QKD links in Topology (line or ring), keys relayed from
	// the first site to the third (network.go).
	Sites    int
	Topology string
	// Rate overrides the workload's enc_keys per second (0: the run's).
	Rate float64
	// Tune adjusts the cluster options (Raft snapshot settings, ...).
	Tune  func(*harness.Options)
	Fault func(ctx context.Context, e *Env) error
}

// Scenarios are the process-mode scenarios, by name.
var Scenarios = map[string]Scenario{
	"none": {
		Name: "none", Description: "no fault: the baseline",
		Fault: func(ctx context.Context, e *Env) error { return nil },
	},
	"leader-kill": {
		Name: "leader-kill", Description: "SIGKILL the master site's leader every 5 s, restart it 1 s later",
		Fault: func(ctx context.Context, e *Env) error {
			return every(ctx, 5*time.Second, func() error { return killRestart(ctx, e, "", time.Second) })
		},
	},
	"slave-leader-kill": {
		Name: "slave-leader-kill", Slave: true, Description: "SIGKILL the slave site's leader every 5 s, restart it 1 s later",
		Fault: func(ctx context.Context, e *Env) error {
			return every(ctx, 5*time.Second, func() error { return killRestart(ctx, e, "", time.Second) })
		},
	},
	"follower-kill": {
		Name: "follower-kill", Description: "SIGKILL a follower of the master site, restart it 2 s later, every 5 s",
		Fault: func(ctx context.Context, e *Env) error {
			return every(ctx, 5*time.Second, func() error {
				l, err := e.C.WaitLeader(ctx, e.Site)
				if err != nil {
					return err
				}
				for _, id := range e.C.Nodes(e.Site) {
					if id != l {
						return killRestart(ctx, e, id, 2*time.Second)
					}
				}
				return nil
			})
		},
	},
	"leader-stop": {
		Name: "leader-stop", Description: "SIGSTOP the master site's leader for 5 s, then SIGCONT",
		Fault: func(ctx context.Context, e *Env) error {
			l, err := leaderAfter(ctx, e, 2*time.Second)
			if err != nil {
				return err
			}
			return hold(ctx, e, 5*time.Second, "SIGSTOP "+l, func() error { return e.C.Stop(l) },
				"SIGCONT "+l, func() error { return e.C.Cont(l) })
		},
	},
	"leader-isolate": {
		Name: "leader-isolate", Netns: true,
		Description: "cut the master site's leader off from its site for 10 s (clients still reach it: the minority answers 503)",
		Fault: func(ctx context.Context, e *Env) error {
			l, err := leaderAfter(ctx, e, 2*time.Second)
			if err != nil {
				return err
			}
			return hold(ctx, e, 10*time.Second, "isolate "+l, func() error { return e.C.Isolate(l) }, "heal "+l, e.C.Heal)
		},
	},
	"link-cut": {
		Name: "link-cut", Netns: true,
		Description: "cut every connection between the two sites for 5 s during enc_keys (relay fails: 503, keys burned)",
		Fault: func(ctx context.Context, e *Env) error {
			Sleep(ctx, 2*time.Second)
			return hold(ctx, e, 5*time.Second, "cut link", e.C.CutLink, "heal link", e.C.Heal)
		},
	},
	"partition-heal-20": {
		Name: "partition-heal-20", Netns: true,
		Description: "isolate the master site's leader for 1 s and heal, 20 times (or until the run ends); clients keep writing through every node, the old leader included",
		Fault: func(ctx context.Context, e *Env) error {
			Sleep(ctx, time.Second)
			for i := 0; i < 20 && ctx.Err() == nil; i++ {
				l, err := e.C.WaitLeader(ctx, e.Site)
				if err != nil {
					return nil // run over
				}
				if err := hold(ctx, e, time.Second, fmt.Sprintf("isolate %s (%d/20)", l, i+1), func() error { return e.C.Isolate(l) },
					"heal "+l, e.C.Heal); err != nil {
					return err
				}
				Sleep(ctx, 300*time.Millisecond)
			}
			return nil
		},
	},
	"snapshot-install": {
		Name: "snapshot-install", Netns: true,
		Description: "cut a follower of the master site off for 10 s while the site commits past its trailing logs (snapshot every 1 s, threshold 16, trailing 8), heal: it catches up by snapshot install",
		Tune: func(o *harness.Options) {
			o.SnapshotInterval, o.SnapshotThreshold, o.TrailingLogs = "1s", 16, 8
		},
		Fault: func(ctx context.Context, e *Env) error {
			l, err := leaderAfter(ctx, e, 2*time.Second)
			if err != nil {
				return err
			}
			var f string
			for _, id := range e.C.Nodes(e.Site) {
				if id != l {
					f = id
					break
				}
			}
			return hold(ctx, e, 10*time.Second, "isolate follower "+f, func() error { return e.C.Isolate(f) }, "heal "+f, e.C.Heal)
		},
	},
	"leader-disk-full": {
		Name: "leader-disk-full", DiskMB: 64,
		Description: "fill the master site leader's data file system (64 MiB tmpfs) for 5 s, then free it",
		Fault: func(ctx context.Context, e *Env) error {
			l, err := leaderAfter(ctx, e, 2*time.Second)
			if err != nil {
				return err
			}
			return hold(ctx, e, 5*time.Second, "disk full "+l, func() error { return e.C.FillDisk(l) },
				"disk freed "+l, func() error { return e.C.FreeDisk(l) })
		},
	},
	"site-restart": {
		Name: "site-restart", Description: "SIGKILL all nodes of the master site at once, restart them 1 s later",
		Fault: func(ctx context.Context, e *Env) error {
			Sleep(ctx, 2*time.Second)
			return siteDown(ctx, e, e.Site, time.Second)
		},
	},
}

// Link scenarios: keys come from the QKD link (Driver), at 5 enc_keys/s.
func init() {
	for _, sc := range []Scenario{
		{
			Name: "link-leader-kill", Driver: "sim", Rate: 5,
			Description: "keys from the QKD link (sim, 1 km): SIGKILL the leader of the site that plays Alice during sessions, restart it 1 s later; 3 s on, the same at the site that plays Bob",
			Fault: func(ctx context.Context, e *Env) error {
				for _, site := range []string{e.Devices.Alice, e.Devices.Bob} {
					if !Sleep(ctx, 2*time.Second) {
						return nil
					}
					se := *e
					se.Site = site
					if err := killRestart(ctx, &se, "", time.Second); err != nil {
						return fmt.Errorf("fault: %w", err)
					}
				}
				return nil
			},
		},
		{
			Name: "link-session-cut", Driver: "sim", Rate: 5, Netns: true,
			Description: "keys from the QKD link (sim, 1 km): cut every connection between the two sites (the link between their leaders and the relays) for 5 s mid-session, then heal",
			Fault: func(ctx context.Context, e *Env) error {
				Sleep(ctx, 3*time.Second)
				return hold(ctx, e, 5*time.Second, "cut link mid-session", e.C.CutLink, "heal link", e.C.Heal)
			},
		},
		{
			Name: "stream-stall", Driver: "devstream", Rate: 5,
			Description: "keys from device streams (devstream emulator, a frame per 0.2 s; stall_timeout 2 s): Bob's stream stalls for 5 s (the emulator's writes to every Bob client block), then flows again",
			Fault: func(ctx context.Context, e *Env) error {
				Sleep(ctx, 3*time.Second)
				return hold(ctx, e, 5*time.Second, "stall Bob's device stream", func() error { return e.Devices.PauseStream("bob") },
					"Bob's stream flows", func() error { return e.Devices.ResumeStream("bob") })
			},
		},
		{
			Name: "device-loss", Driver: "etsi014", Rate: 5,
			Description: "keys from ETSI 014 key-delivery devices (two emulated devices, call timeout 2 s): the Alice site's device hangs for 4 s (calls time out), then answers 503 for 4 s, then recovers",
			Fault: func(ctx context.Context, e *Env) error {
				Sleep(ctx, 3*time.Second)
				dev := e.Devices.ETSI.A
				e.H.Mark(history.EventFault, "Alice's key-delivery device hangs")
				dev.SetFault(etsi014.Fault{Kind: etsi014.FaultDelay, Delay: time.Minute})
				Sleep(context.WithoutCancel(ctx), 4*time.Second)
				e.H.Mark(history.EventFault, "Alice's key-delivery device answers 503")
				dev.SetFault(etsi014.Fault{Kind: etsi014.FaultUnavailable})
				Sleep(context.WithoutCancel(ctx), 4*time.Second)
				dev.SetFault(etsi014.Fault{})
				e.H.Mark(history.EventHeal, "Alice's key-delivery device back")
				return nil
			},
		},
	} {
		Scenarios[sc.Name] = sc
	}
}

// Names lists the scenarios in a stable order.
func Names() []string {
	out := make([]string, 0, len(Scenarios))
	for n := range Scenarios {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// killRestart SIGKILLs node id (the site's leader when id is "") and
// restarts it after down.
func killRestart(ctx context.Context, e *Env, id string, down time.Duration) error {
	if id == "" {
		l, err := e.C.WaitLeader(ctx, e.Site)
		if err != nil {
			return err
		}
		id = l
	}
	return hold(ctx, e, down, "SIGKILL "+id, func() error { return e.C.Kill(id) }, "restart "+id, func() error { return e.C.StartNode(id) })
}

// hold applies a fault (marked in the history), keeps it for d whatever
// ctx does, and undoes it (marked once undone): the shape of every timed
// fault here.
func hold(ctx context.Context, e *Env, d time.Duration, fault string, apply func() error, heal string, undo func() error) error {
	e.H.Mark(history.EventFault, fault)
	if err := apply(); err != nil {
		return err
	}
	Sleep(context.WithoutCancel(ctx), d)
	if err := undo(); err != nil {
		return err
	}
	e.H.Mark(history.EventHeal, heal)
	return nil
}

// leaderAfter waits d into the workload, then for the target site's leader.
func leaderAfter(ctx context.Context, e *Env, d time.Duration) (string, error) {
	Sleep(ctx, d)
	return e.C.WaitLeader(ctx, e.Site)
}

// every runs f after each period until ctx ends, leaving one period of
// quiet at the end (no fault starts in the last period).
func every(ctx context.Context, period time.Duration, f func() error) error {
	dl, hasDL := ctx.Deadline()
	for {
		if !Sleep(ctx, period) {
			return nil
		}
		if hasDL && time.Until(dl) < period {
			return nil
		}
		if err := f(); err != nil {
			return fmt.Errorf("fault: %w", err)
		}
	}
}

// Sleep waits d or until ctx ends; false when ctx ended.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
