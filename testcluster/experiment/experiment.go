// Package experiment runs the failover experiments (README, "Failover
// experiments"): for each scenario of testcluster/faults it starts two
// sites as local processes (testcluster/harness), runs an SAE workload
// (testcluster/workload) while the fault strikes, heals, drains, checks the
// history (testcluster/checker), compares the FSM digests of every node,
// scans every data directory for key bytes at rest, and writes the report
// and plots (testcluster/report). Main is the lab command's CLI
// (testcluster/cmd/qkdkms-lab); the server binary does not link any of it.
package experiment

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"qkdkms/node/network"
	"qkdkms/testcluster/checker"
	"qkdkms/testcluster/faults"
	"qkdkms/testcluster/harness"
	"qkdkms/testcluster/history"
	"qkdkms/testcluster/report"
	"qkdkms/testcluster/workload"
)

// Options configures RunScenario and Run.
type Options struct {
	// Binary is the qkdkms binary the nodes run (default: qkdkms beside
	// this executable, i.e. bin/qkdkms beside bin/qkdkms-lab).
	Binary string
	// Out is the report directory (default reports/<UTC time>).
	Out string
	// Duration of the workload per scenario (default 30 s).
	Duration time.Duration
	// Rate of enc_keys calls per second, Number keys per call, KeyBits per key.
	Rate    float64
	Number  int
	KeyBits int
	// Nodes per site (default 3).
	Nodes int
	// Raft timing ("" = node defaults).
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout string
	// FetchWindow is the checker's window after healing (default 30 s).
	FetchWindow time.Duration
	// Progress receives a progress bar (nil = none).
	Progress io.Writer
	Logger   *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("experiment: find own executable: %w", err)
		}
		o.Binary = filepath.Join(filepath.Dir(exe), "qkdkms")
	}
	if _, err := os.Stat(o.Binary); err != nil {
		return o, fmt.Errorf("experiment: the nodes' binary (make build, or --bin): %w", err)
	}
	if o.Out == "" {
		o.Out = filepath.Join("reports", time.Now().UTC().Format("20060102-150405"))
	}
	if o.Duration <= 0 {
		o.Duration = 30 * time.Second
	}
	if o.Rate <= 0 {
		o.Rate = 20
	}
	if o.Number <= 0 {
		o.Number = 2
	}
	if o.KeyBits <= 0 {
		o.KeyBits = 256
	}
	if o.Nodes <= 0 {
		o.Nodes = 3
	}
	if o.FetchWindow <= 0 {
		o.FetchWindow = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o, nil
}

// setup is what the report's header says of a run with these options.
func (o Options) setup() report.Setup {
	return report.Setup{Nodes: o.Nodes, Rate: o.Rate, Number: o.Number, KeyBits: o.KeyBits, Duration: o.Duration, FetchWindow: o.FetchWindow}
}

// RunScenario starts a fresh cluster under dir, runs the workload with the
// scenario's fault, heals, drains and checks. The history is written to
// dir/history.json and the plots to dir/*.png.
func RunScenario(ctx context.Context, sc faults.Scenario, dir string, o Options, tick func()) *report.Result {
	start := time.Now()
	res := &report.Result{Scenario: sc.Name, Description: sc.Description, Dir: dir}
	err := runScenario(ctx, sc, dir, o, res, tick)
	if err != nil {
		res.Err = err.Error()
	}
	res.Wall = time.Since(start)
	return res
}

func runScenario(ctx context.Context, sc faults.Scenario, dir string, o Options, res *report.Result, tick func()) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if (sc.Netns || sc.DiskMB > 0) && !harness.NetnsAvailable() {
		return fmt.Errorf("skipped: scenario needs root (network namespaces / tmpfs)")
	}
	copts := harness.Options{
		Binary: o.Binary, Dir: filepath.Join(dir, "cluster"), Nodes: o.Nodes, FreePorts: true, Seed: true,
		Netns: sc.Netns, DataTmpfsMB: sc.DiskMB,
		HeartbeatTimeout: o.HeartbeatTimeout, ElectionTimeout: o.ElectionTimeout, LeaderLeaseTimeout: o.LeaderLeaseTimeout,
		Logger: o.Logger,
	}
	if sc.Tune != nil {
		sc.Tune(&copts)
	}
	if sc.Rate > 0 {
		o.Rate = sc.Rate
	}
	// A network scenario: sites joined by simulated QKD links that make
	// relay key; keys relayed from the first site to the third.
	var sites []string
	if sc.Sites > 2 {
		sites = faults.NetworkSites(sc.Sites)
		copts.Sites, copts.Topology = sites, sc.Topology
		copts.Link = &harness.LinkSpec{Native: true, FiberKm: 1, BlockBits: 200_000, RelayPoolBytes: 256 << 10, RelayShare: 0.5}
	}
	var devs *harness.Devices
	if sc.Driver != "" {
		sender, receiver := copts.Sender, copts.Receiver
		if sender == "" {
			sender, receiver = harness.DefaultSender, harness.DefaultReceiver
		}
		var err error
		devs, err = harness.StartDevices(harness.DeviceOptions{Driver: sc.Driver, Dir: filepath.Join(dir, "devices"),
			Sites: [2]string{sender, receiver}, StallTimeout: 2 * time.Second, DeviceTimeout: 2 * time.Second, Logger: o.Logger})
		if err != nil {
			return err
		}
		defer devs.Close()
		bits := 40_000
		if sc.Driver == "sim" {
			bits = 200_000 // fewer sifted bits leave no key after the finite-key bound
		}
		copts.Link = &harness.LinkSpec{Native: true, FiberKm: 1, BlockBits: bits, Links: devs.Links}
	}
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	c, err := harness.Start(sctx, copts)
	cancel()
	if err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	defer c.StopAll()
	src, dst := c.Sender(), c.Receiver()
	if sites != nil {
		src, dst = sites[0], sites[2]
	}
	master, slave := "ghi", "jkl"
	setup, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	keys := int(o.Rate*o.Duration.Seconds()*float64(o.Number)*1.3) + 200
	if err := c.RegisterConnection(setup, harness.Connection{SourceKME: src, TargetKME: dst, MasterSAE: master, SlaveSAE: slave,
		KeySize: o.KeyBits, MaxKeysCount: keys * 2, MaxKeyPerRequest: max(o.Number, 1)}); err != nil {
		return fmt.Errorf("register connection: %w", err)
	}
	if devs == nil && sites == nil {
		if err := c.FillPool(setup, src, master, slave, keys, o.KeyBits, 500); err != nil {
			return fmt.Errorf("fill pool: %w", err)
		}
	} else {
		// The link (or the relay) alone fills the pools: wait for the
		// workload's keys.
		fctx, fcancel := context.WithTimeout(ctx, 3*time.Minute)
		err := waitPools(fctx, c, src, dst, master, slave, func(a, b float64) bool { return a >= float64(keys) && b >= float64(keys) })
		fcancel()
		if err != nil {
			return fmt.Errorf("the link did not fill the pools with %d keys: %w", keys, err)
		}
	}
	burned0 := c.Burned(setup, src)
	mc, err := workload.Client(c, master, src)
	if err != nil {
		return err
	}
	scl, err := workload.Client(c, slave, dst)
	if err != nil {
		return err
	}
	h := history.New()
	w := workload.New(h, workload.Options{Master: mc, Slave: scl, Rate: o.Rate, Number: o.Number, Duration: o.Duration, NodeOf: c.NodeOf, KeepKeys: true})
	env := &faults.Env{C: c, H: h, Site: src, Devices: devs, Sites: sites}
	if sc.Slave {
		env.Site = dst
	}

	// Pool sampler and progress ticks until the drain ends.
	var pool []report.PoolSample
	var links []checker.LinkSample
	var poolMu sync.Mutex
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var swg sync.WaitGroup
	swg.Add(1)
	go func() {
		defer swg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		n := 0
		for {
			for _, site := range []string{src, dst} {
				if v, ok := poolLevel(sampleCtx, c, site, master, slave); ok {
					poolMu.Lock()
					pool = append(pool, report.PoolSample{At: time.Now(), Site: site, Stored: v})
					poolMu.Unlock()
				}
				if devs != nil {
					if s, ok := linkSample(sampleCtx, c, site); ok {
						poolMu.Lock()
						links = append(links, s)
						poolMu.Unlock()
					}
				}
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-t.C:
			}
			if n++; n%2 == 0 && tick != nil {
				tick()
			}
		}
	}()

	wctx, wcancel := context.WithTimeout(ctx, o.Duration)
	var faultErr error
	var fwg sync.WaitGroup
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		faultErr = sc.Fault(wctx, env)
	}()
	w.Run(wctx)
	wcancel()
	fwg.Wait()
	// Heal: every node up and every site led again.
	for _, s := range c.Layout.Sites {
		for _, n := range s.Nodes {
			if !c.Running(n.ID) {
				_ = c.StartNode(n.ID)
			}
		}
	}
	hctx, hcancel := context.WithTimeout(ctx, 60*time.Second)
	herr := c.WaitLeaders(hctx)
	hcancel()
	w.Drain(ctx, o.FetchWindow)
	h.End = time.Now()
	stopSampling()
	swg.Wait()
	if b := c.Burned(ctx, src); b >= 0 && burned0 >= 0 {
		h.Burned = b - burned0
	}
	res.Report = checker.Check(h, checker.Config{FetchWindow: o.FetchWindow})
	res.Pool = pool
	if devs != nil {
		// Pools identical at both sites after healing: the same blocks
		// added and the same bits left, read while neither changes.
		var states []checker.PoolState
		pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
		perr := waitPools(pctx, c, src, dst, master, slave, nil, &states)
		pcancel()
		res.Report.Link = checker.CheckLink(sc.Driver, links, states, perr == nil)
		res.Report.Violations = append(res.Report.Violations, res.Report.Link.Violations...)
	}
	if sites != nil {
		// Pools identical at both ends, then the relay key of every link.
		var states []checker.PoolState
		pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
		perr := waitPools(pctx, c, src, dst, master, slave, nil, &states)
		rs, rerr := relayState(pctx, c, sites)
		pcancel()
		if rerr != nil {
			res.Report.Violations = append(res.Report.Violations, "relay state not read: "+rerr.Error())
		}
		res.Report.Relay = checker.CheckRelay(rs, states, perr == nil)
		res.Report.Violations = append(res.Report.Violations, res.Report.Relay.Violations...)
	}
	// FSM digests of every node, then the at-rest scan of every data
	// directory and log.
	switch ds, bad, err := c.DigestsAgree(ctx, 15*time.Second); {
	case errors.Is(err, harness.ErrNoDigest):
		res.Report.FSMDigest = "n/a: nodes serve no /admin/v1/digest"
	case err != nil:
		res.Report.FSMDigest = "not compared: " + err.Error()
	case bad > 0:
		res.Report.FSMDigestMismatch = bad
		res.Report.FSMDigest = fmt.Sprintf("MISMATCH in %d site(s)", bad)
		res.Report.Violations = append(res.Report.Violations, fmt.Sprintf("FSM digests differ: %+v", ds))
	default:
		res.Report.FSMDigest = fmt.Sprintf("equal on all %d nodes", len(ds))
	}
	dirs := []string{filepath.Join(c.Layout.Dir, "data"), filepath.Join(c.Layout.Dir, "logs")}
	keysSeen := w.Keys()
	hits, serr := checker.ScanAtRest(dirs, keysSeen)
	res.Report.AtRestKeys = len(keysSeen)
	res.Report.AtRestHits = len(hits)
	for i, hit := range hits {
		if i == 5 {
			break
		}
		res.Report.Violations = append(res.Report.Violations, fmt.Sprintf("key in plaintext (%s) in %s at %d", hit.Encoding, hit.File, hit.Offset))
	}
	if err := h.WriteFile(filepath.Join(dir, "history.json")); err != nil {
		return err
	}
	plots, perr := report.WritePlots(dir, sc.Name, h, pool)
	res.Plots = plots
	return errors.Join(wrapIf("fault", faultErr), wrapIf("heal", herr), wrapIf("plots", perr), wrapIf("at-rest scan", serr))
}

func wrapIf(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// linkSample reads the link status at site's leader.
func linkSample(ctx context.Context, c *harness.Cluster, site string) (checker.LinkSample, bool) {
	l, err := c.Leader(ctx, site)
	if err != nil {
		return checker.LinkSample{}, false
	}
	st, err := c.LinkStatuses(ctx, l)
	if err != nil || len(st) != 1 {
		return checker.LinkSample{}, false
	}
	return checker.LinkSample{At: time.Now(), Site: site, Leader: l, Sessions: st[0].Sessions, Aborted: st[0].Aborted, PadEnd: st[0].AuthPadsUsed}, true
}

// waitPools reads master→slave's pool (blocks added, stored bits) at both
// sites' leaders until cond holds of the sender's and receiver's stored
// keys, or, with cond nil, until both sites hold the same blocks and bits
// in a reading where the sender's did not change across the receiver's;
// *out (if given) gets the last reading.
func waitPools(ctx context.Context, c *harness.Cluster, src, dst, master, slave string, cond func(a, b float64) bool, out ...*[]checker.PoolState) error {
	read := func(site string) (checker.PoolState, float64, bool) {
		l, err := c.Leader(ctx, site)
		if err != nil {
			return checker.PoolState{}, 0, false
		}
		m, err := c.Metrics(ctx, l)
		if err != nil {
			return checker.PoolState{}, 0, false
		}
		lb := `{master="` + master + `",slave="` + slave + `"}`
		b, ok1 := m["qkdkms_blocks_added_total"+lb]
		bits, ok2 := m["qkdkms_pool_stored_bits"+lb]
		return checker.PoolState{Site: site, Blocks: b, Bits: bits}, m["qkdkms_pool_stored_keys"+lb], ok1 && ok2
	}
	for {
		a, ka, okA := read(src)
		b, kb, okB := read(dst)
		a2, _, okA2 := read(src)
		if okA && okB && okA2 {
			for _, o := range out {
				*o = []checker.PoolState{a, b}
			}
			if cond != nil && cond(ka, kb) || cond == nil && a.Blocks == b.Blocks && a.Bits == b.Bits && a == a2 {
				return nil
			}
		}
		if !faults.Sleep(ctx, 300*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// relayState reads every site's network status (its leader's) and pairs
// the two ends of each link for checker.CheckRelay.
func relayState(ctx context.Context, c *harness.Cluster, sites []string) (checker.RelayState, error) {
	var rs checker.RelayState
	ends := map[[2]string]network.LinkReport{} // (site, peer) → the link as site reports it
	for _, site := range sites {
		st, err := faults.NetworkStatus(ctx, c, site)
		for err != nil && faults.Sleep(ctx, 300*time.Millisecond) {
			st, err = faults.NetworkStatus(ctx, c, site)
		}
		if err != nil {
			return rs, fmt.Errorf("%s: %w", site, err)
		}
		for _, s := range st.Sites {
			if s.KME != site {
				continue
			}
			for _, l := range s.Links {
				ends[[2]string{site, l.Peer}] = l
			}
		}
		for _, cr := range st.Connections {
			rs.Conns = append(rs.Conns, checker.RelayConn{Source: site, Target: cr.Target, Pending: cr.Pending,
				Done: cr.Relay.Done, DoneBits: cr.Relay.DoneBits, HopBytes: cr.Relay.HopBytes, Burned: cr.Relay.Burned})
		}
	}
	for k, a := range ends {
		if k[0] > k[1] {
			continue
		}
		b := ends[[2]string{k[1], k[0]}]
		rs.Links = append(rs.Links, checker.RelayLink{A: k[0], B: k[1],
			SentAB: a.OutUsed, ReceivedAB: b.InUsed, SentBA: b.OutUsed, ReceivedBA: a.InUsed})
	}
	return rs, nil
}

// poolLevel reads qkdkms_pool_stored_keys of master→slave at site's leader.
func poolLevel(ctx context.Context, c *harness.Cluster, site, master, slave string) (float64, bool) {
	l, err := c.Leader(ctx, site)
	if err != nil {
		return 0, false
	}
	m, err := c.Metrics(ctx, l)
	if err != nil {
		return 0, false
	}
	v, ok := m[`qkdkms_pool_stored_keys{master="`+master+`",slave="`+slave+`"}`]
	return v, ok
}

// Run runs the named scenarios (or all) one after the other and writes
// report.md and report.json into o.Out.
func Run(ctx context.Context, names []string, o Options) ([]*report.Result, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	var scs []faults.Scenario
	for _, n := range names {
		if n == "all" {
			for _, a := range faults.Names() {
				scs = append(scs, faults.Scenarios[a])
			}
			continue
		}
		sc, ok := faults.Scenarios[n]
		if !ok {
			return nil, fmt.Errorf("unknown scenario %q (have: %s)", n, strings.Join(faults.Names(), ", "))
		}
		scs = append(scs, sc)
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	var bar *progressbar.ProgressBar
	if o.Progress != nil {
		// One step per second of workload, plus the drain/teardown estimate.
		per := int64(o.Duration.Seconds()) + 10
		bar = progressbar.NewOptions64(per*int64(len(scs)),
			progressbar.OptionSetWriter(o.Progress), progressbar.OptionSetDescription("qkdkms-lab"),
			progressbar.OptionShowCount(), progressbar.OptionSetWidth(30), progressbar.OptionClearOnFinish())
	}
	var results []*report.Result
	for i, sc := range scs {
		if ctx.Err() != nil {
			break
		}
		if bar != nil {
			bar.Describe(fmt.Sprintf("[%d/%d] %s", i+1, len(scs), sc.Name))
		}
		var ticks int64
		tick := func() {
			ticks++
			if bar != nil {
				_ = bar.Add(1)
			}
		}
		r := RunScenario(ctx, sc, filepath.Join(o.Out, sc.Name), o, tick)
		if bar != nil {
			per := int64(o.Duration.Seconds()) + 10
			if ticks < per {
				_ = bar.Add64(per - ticks)
			}
		}
		results = append(results, r)
		if err := report.Write(o.Out, o.setup(), results); err != nil {
			return results, err
		}
	}
	if bar != nil {
		_ = bar.Finish()
	}
	return results, nil
}
