// Command qkdkms-lab runs the failover experiments against bin/qkdkms and
// writes their reports and plots (README, "Failover experiments"):
//
//	qkdkms-lab list
//	qkdkms-lab run [flags] SCENARIO...|all
//
// It is a binary of its own so that the server, bin/qkdkms, links none of
// the experiment, report or plotting code (gonum/plot and the LaTeX, PDF
// and font packages it brings).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"qkdkms/testcluster/experiment"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := experiment.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
