package experiment

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"qkdkms/testcluster/faults"
)

// Main is the lab command (testcluster/cmd/qkdkms-lab, README "Failover
// experiments"): `qkdkms-lab list` names the scenarios, `qkdkms-lab run
// [flags] SCENARIO...|all` runs them and writes the report. It returns the
// process exit code: 0 every scenario passed, 1 one failed or the run
// could not start, 2 usage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage := func(w io.Writer) {
		fmt.Fprintln(w, "usage: qkdkms-lab run [flags] SCENARIO...|all   run failover experiments, write reports/<time>/")
		fmt.Fprintln(w, "       qkdkms-lab list                          the scenarios")
		fmt.Fprintln(w, "       qkdkms-lab run -h                        the flags")
	}
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "run":
	case "list":
		if len(args) > 1 {
			usage(stderr)
			return 2
		}
		for _, n := range faults.Names() {
			fmt.Fprintf(stdout, "%-18s %s\n", n, faults.Scenarios[n].Description)
		}
		return 0
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "qkdkms-lab: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	fs := flag.NewFlagSet("qkdkms-lab run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o Options
	short := fs.Bool("short", false, "short runs (12 s workload, 15 s drain window)")
	fs.StringVar(&o.Out, "out", "", "report directory (default reports/<UTC time>)")
	fs.StringVar(&o.Binary, "bin", "", "qkdkms binary for the nodes (default: qkdkms beside this executable, i.e. bin/qkdkms)")
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
		fmt.Fprintf(stderr, "name scenarios or all: %s\n", strings.Join(faults.Names(), ", "))
		return 2
	}
	if *short {
		o.Duration, o.FetchWindow = 12*time.Second, 15*time.Second
	}
	if !*quiet {
		o.Progress = stderr
	}
	results, err := Run(ctx, fs.Args(), o)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms-lab: %v\n", err)
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
