package testcluster

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// ExperimentOptions configures RunScenario and Experiment.
type ExperimentOptions struct {
	// Binary is the qkdkms binary the nodes run (default: this executable).
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

func (o ExperimentOptions) withDefaults() (ExperimentOptions, error) {
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, err
		}
		o.Binary = exe
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

// PoolSample is one reading of a site's pool level.
type PoolSample struct {
	At     time.Time `json:"at"`
	Site   string    `json:"site"`
	Stored float64   `json:"stored_keys"`
}

// ScenarioResult is one scenario's outcome.
type ScenarioResult struct {
	Scenario    string        `json:"scenario"`
	Description string        `json:"description"`
	Report      *Report       `json:"report,omitempty"`
	Pool        []PoolSample  `json:"pool,omitempty"`
	Err         string        `json:"error,omitempty"`
	Wall        time.Duration `json:"wall_ns"`
	Dir         string        `json:"dir"`
	Plots       []string      `json:"plots,omitempty"`
}

// OK reports a scenario that ran and passed the checker.
func (r *ScenarioResult) OK() bool { return r.Err == "" && r.Report != nil && r.Report.OK() }

// RunScenario starts a fresh cluster under dir, runs the workload with the
// scenario's fault, heals, drains and checks. The history is written to
// dir/history.json and the plots to dir/*.png.
func RunScenario(ctx context.Context, sc Scenario, dir string, o ExperimentOptions, tick func()) *ScenarioResult {
	start := time.Now()
	res := &ScenarioResult{Scenario: sc.Name, Description: sc.Description, Dir: dir}
	err := runScenario(ctx, sc, dir, o, res, tick)
	if err != nil {
		res.Err = err.Error()
	}
	res.Wall = time.Since(start)
	return res
}

func runScenario(ctx context.Context, sc Scenario, dir string, o ExperimentOptions, res *ScenarioResult, tick func()) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if (sc.Netns || sc.DiskMB > 0) && !NetnsAvailable() {
		return fmt.Errorf("skipped: scenario needs root (network namespaces / tmpfs)")
	}
	copts := Options{
		Binary: o.Binary, Dir: filepath.Join(dir, "cluster"), Nodes: o.Nodes, FreePorts: true, Seed: true,
		Netns: sc.Netns, DataTmpfsMB: sc.DiskMB,
		HeartbeatTimeout: o.HeartbeatTimeout, ElectionTimeout: o.ElectionTimeout, LeaderLeaseTimeout: o.LeaderLeaseTimeout,
		Logger: o.Logger,
	}
	if sc.Tune != nil {
		sc.Tune(&copts)
	}
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	c, err := Start(sctx, copts)
	cancel()
	if err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	defer c.StopAll()
	master, slave := "ghi", "jkl"
	setup, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	keys := int(o.Rate*o.Duration.Seconds()*float64(o.Number)*1.3) + 200
	if err := c.RegisterConnection(setup, Connection{SourceKME: c.Sender(), TargetKME: c.Receiver(), MasterSAE: master, SlaveSAE: slave,
		KeySize: o.KeyBits, MaxKeysCount: keys * 2, MaxKeyPerRequest: max(o.Number, 1)}); err != nil {
		return fmt.Errorf("register connection: %w", err)
	}
	if err := c.FillPool(setup, c.Sender(), master, slave, keys, o.KeyBits, 500); err != nil {
		return fmt.Errorf("fill pool: %w", err)
	}
	burned0 := c.Burned(setup, c.Sender())
	mc, err := c.SAE(master, c.Sender())
	if err != nil {
		return err
	}
	scl, err := c.SAE(slave, c.Receiver())
	if err != nil {
		return err
	}
	h := NewHistory()
	w := NewWorkload(h, WorkloadOptions{Master: mc, Slave: scl, Rate: o.Rate, Number: o.Number, Duration: o.Duration, NodeOf: c.NodeOf, KeepKeys: true})
	env := &Env{C: c, H: h, Site: c.Sender()}
	if sc.Slave {
		env.Site = c.Receiver()
	}

	// Pool sampler and progress ticks until the drain ends.
	var pool []PoolSample
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
			for _, site := range []string{c.Sender(), c.Receiver()} {
				if v, ok := c.poolLevel(sampleCtx, site, master, slave); ok {
					poolMu.Lock()
					pool = append(pool, PoolSample{At: time.Now(), Site: site, Stored: v})
					poolMu.Unlock()
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
	if b := c.Burned(ctx, c.Sender()); b >= 0 && burned0 >= 0 {
		h.Burned = b - burned0
	}
	res.Report = Check(h, CheckConfig{FetchWindow: o.FetchWindow})
	res.Pool = pool
	// FSM digests of every node, then the at-rest scan of every data
	// directory and log.
	switch ds, bad, err := c.DigestsAgree(ctx, 15*time.Second); {
	case errors.Is(err, ErrNoDigest):
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
	hits, serr := ScanAtRest(dirs, keysSeen)
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
	plots, perr := writePlots(dir, sc.Name, h, pool)
	res.Plots = plots
	return errors.Join(wrapIf("fault", faultErr), wrapIf("heal", herr), wrapIf("plots", perr), wrapIf("at-rest scan", serr))
}

func wrapIf(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// poolLevel reads qkdkms_pool_stored_keys of master→slave at site's leader.
func (c *Cluster) poolLevel(ctx context.Context, site, master, slave string) (float64, bool) {
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

// Experiment runs the named scenarios one after the other and writes
// report.md and report.json into o.Out.
func Experiment(ctx context.Context, names []string, o ExperimentOptions) ([]*ScenarioResult, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	var scs []Scenario
	for _, n := range names {
		if n == "all" {
			for _, a := range ScenarioNames() {
				scs = append(scs, Scenarios[a])
			}
			continue
		}
		sc, ok := Scenarios[n]
		if !ok {
			return nil, fmt.Errorf("unknown scenario %q (have: %s)", n, strings.Join(ScenarioNames(), ", "))
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
			progressbar.OptionSetWriter(o.Progress), progressbar.OptionSetDescription("experiment"),
			progressbar.OptionShowCount(), progressbar.OptionSetWidth(30), progressbar.OptionClearOnFinish())
	}
	var results []*ScenarioResult
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
		if err := writeReport(o, results); err != nil {
			return results, err
		}
	}
	if bar != nil {
		_ = bar.Finish()
	}
	return results, nil
}

func writeReport(o ExperimentOptions, results []*ScenarioResult) error {
	var b strings.Builder
	b.WriteString("# qkdkms failover experiments\n\n")
	fmt.Fprintf(&b, "Two sites × %d node processes (loopback; own network namespaces on a bridge for the isolate/link-cut scenarios; tmpfs data dirs for disk-full); workload: %.0f enc_keys/s × %d keys of %d bits for %v, every key fetched by dec_keys at the peer site; drain window %v after healing.\n\n",
		o.Nodes, o.Rate, o.Number, o.KeyBits, o.Duration, o.FetchWindow)
	b.WriteString("| scenario | verdict | requests | ok | errors | ambiguous | double-issued | not fetchable | never issued | 2nd fetch | mismatch | burned ≤ allowance | p50 / p99 during | max recovery |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		verdict := "PASS"
		if !r.OK() {
			verdict = "FAIL"
		}
		rep := r.Report
		if rep == nil {
			fmt.Fprintf(&b, "| %s | ERROR | | | | | | | | | | | | |\n", r.Scenario)
			continue
		}
		lat := rep.Latency[PhaseDuring]
		if lat.Count == 0 {
			lat = rep.Latency[PhaseBefore]
		}
		rec := "–"
		if len(rep.Recovery) > 0 {
			rec = rep.MaxRecovery.Round(time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %d | %d | %d | %d | %d | %d ≤ %d | %v / %v | %s |\n",
			r.Scenario, verdict, rep.Requests, rep.Successes, rep.Errors, rep.Ambiguous, rep.DoubleIssued, rep.NotFetchable,
			rep.DecNeverIssued, rep.SecondFetch, rep.ByteMismatch, rep.Burned, rep.BurnAllowance,
			lat.P50.Round(100*time.Microsecond), lat.P99.Round(100*time.Microsecond), rec)
	}
	b.WriteString("\n")
	for _, r := range results {
		fmt.Fprintf(&b, "## %s\n\n%s\n\n", r.Scenario, r.Description)
		if r.Err != "" {
			fmt.Fprintf(&b, "**error:** %s\n\n", r.Err)
		}
		if r.Report != nil {
			b.WriteString(r.Report.Markdown(r.Scenario))
		}
		for _, p := range r.Plots {
			rel, _ := filepath.Rel(o.Out, p)
			fmt.Fprintf(&b, "\n![%s](%s)\n", filepath.Base(p), rel)
		}
		b.WriteString("\n")
	}
	if err := os.WriteFile(filepath.Join(o.Out, "report.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(results, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(o.Out, "report.json"), js, 0o644)
}

// RunExperiment is `qkdkms experiment run SCENARIO...`: the CLI shape for
// the dispatch table.
func RunExperiment(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "run" {
		if len(args) > 0 && args[0] == "list" {
			for _, n := range ScenarioNames() {
				fmt.Fprintf(stdout, "%-18s %s\n", n, Scenarios[n].Description)
			}
			return 0
		}
		fmt.Fprintln(stderr, "usage: qkdkms experiment run [flags] SCENARIO...|all  |  qkdkms experiment list")
		return 2
	}
	fs := flag.NewFlagSet("experiment run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o ExperimentOptions
	short := fs.Bool("short", false, "short runs (12 s workload, 15 s drain window)")
	fs.StringVar(&o.Out, "out", "", "report directory (default reports/<UTC time>)")
	fs.StringVar(&o.Binary, "bin", "", "qkdkms binary for the nodes (default: this executable)")
	fs.DurationVar(&o.Duration, "duration", 30*time.Second, "workload duration per scenario")
	fs.Float64Var(&o.Rate, "rate", 20, "enc_keys calls per second")
	fs.IntVar(&o.Number, "number", 2, "keys per enc_keys call")
	fs.IntVar(&o.KeyBits, "key-bits", 256, "key size in bits")
	fs.IntVar(&o.Nodes, "nodes", 3, "nodes per site")
	fs.StringVar(&o.HeartbeatTimeout, "raft-heartbeat-timeout", "", "raft.heartbeat_timeout of every node (\"\" = default)")
	fs.StringVar(&o.ElectionTimeout, "raft-election-timeout", "", "raft.election_timeout of every node")
	fs.StringVar(&o.LeaderLeaseTimeout, "raft-leader-lease-timeout", "", "raft.leader_lease_timeout of every node")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := fs.Parse(args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintf(stderr, "name scenarios or all: %s\n", strings.Join(ScenarioNames(), ", "))
		return 2
	}
	if *short {
		o.Duration, o.FetchWindow = 12*time.Second, 15*time.Second
	}
	if !*quiet {
		o.Progress = stderr
	}
	results, err := Experiment(ctx, fs.Args(), o)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms experiment: %v\n", err)
		return 1
	}
	code := 0
	for _, r := range results {
		verdict := "PASS"
		if !r.OK() {
			verdict, code = "FAIL", 1
		}
		fmt.Fprintf(stdout, "%-18s %s", r.Scenario, verdict)
		if r.Report != nil {
			fmt.Fprintf(stdout, "  requests %d ok %d ambiguous %d burned %d max recovery %v", r.Report.Requests, r.Report.Successes, r.Report.Ambiguous, r.Report.Burned, r.Report.MaxRecovery.Round(time.Millisecond))
		}
		if r.Err != "" {
			fmt.Fprintf(stdout, "  error: %s", r.Err)
		}
		fmt.Fprintln(stdout)
	}
	if len(results) > 0 {
		fmt.Fprintf(stdout, "report: %s\n", filepath.Join(filepath.Dir(results[0].Dir), "report.md"))
	}
	return code
}
