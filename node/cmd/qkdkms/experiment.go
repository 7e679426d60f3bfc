package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

func init() {
	register("experiment", "failover experiments: experiment list | run NAME... (runs qkdkms-lab, built by make lab)", runExperiment)
}

// runExperiment hands the failover experiments to the lab command,
// qkdkms-lab beside this executable (testcluster/cmd/qkdkms-lab): this
// binary links none of the experiment, report or plotting code.
func runExperiment(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms experiment: %v\n", err)
		return 1
	}
	lab := filepath.Join(filepath.Dir(exe), "qkdkms-lab")
	if _, err := os.Stat(lab); err != nil {
		fmt.Fprintf(stderr, "qkdkms experiment: the failover experiments are the lab command's, and %s is not there: run make lab (it builds bin/qkdkms-lab), then bin/qkdkms-lab %s\n",
			lab, firstOr(args, "list"))
		return 2
	}
	cmd := exec.CommandContext(ctx, lab, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintf(stderr, "qkdkms experiment: %v\n", err)
		return 1
	}
	return 0
}

func firstOr(args []string, def string) string {
	if len(args) > 0 {
		return args[0]
	}
	return def
}
