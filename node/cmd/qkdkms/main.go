// Command qkdkms is the one qkdkms binary: a KME node, its PKI and KEK
// tools, the admin client, an SAE client and the QKD simulator.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand. run gets the arguments after the subcommand
// name and returns the process exit code (0 ok, 1 failure, 2 usage).
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands is the dispatch table. Later subcommands (plugin, demo)
// register themselves from their own files with register.
var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) int) {
	if _, dup := commands[name]; dup {
		panic("qkdkms: duplicate subcommand " + name)
	}
	commands[name] = command{summary: summary, run: run}
}

func init() {
	register("serve", "run a KME node: serve --config FILE [flags]", runServe)
	register("certs", "demo PKI: certs init|node|sae|operator --pki DIR ...", runCerts)
	register("kek", "generate a site key-encryption key: kek FILE", runKEK)
	register("join", "add a node to a site: join --id ID --address HOST:PORT [admin flags]", runJoin)
	register("remove", "remove a node from a site: remove --id ID [admin flags]", runRemove)
	register("servers", "list a site's Raft servers: servers [admin flags]", runServers)
	register("version", "print the version", runVersion)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				return c.run(ctx, []string{"-h"}, stdout, stderr)
			}
		}
		usage(stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "qkdkms: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "qkdkms — a key management system for QKD networks (ETSI GS QKD 014)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: qkdkms <command> [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'qkdkms <command> -h' for a command's flags. Configuration reference: node/CONFIG.md.")
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: qkdkms version")
		return 2
	}
	v, rev := "(devel)", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
		parts := []string{"qkdkms", v}
		if rev != "" {
			parts = append(parts, rev)
		}
		fmt.Fprintln(stdout, strings.Join(append(parts, bi.GoVersion), " "))
		return 0
	}
	fmt.Fprintf(stdout, "qkdkms %s\n", v)
	return 0
}
