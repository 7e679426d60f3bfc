package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"text/tabwriter"

	"qkdkms/node"
	"qkdkms/node/link"
)

func init() {
	register("psk", "write a pre-shared link authentication secret: psk FILE [--bytes N]", runPSK)
	register("link", "QKD links: link status | link eve P --peer KME [admin flags]", runLink)
	register("plugin", "step plugins: plugin list | install FILE.wasm --name N --step S --version V | use STEP NAME[@VERSION] [admin flags]", runPlugin)
}

// runPSK writes a new random secret shared by the two sites of a link.
func runPSK(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("psk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("bytes", 64<<10, "secret size in bytes (16 bytes of hash key, the rest one-time pads)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: qkdkms psk FILE [--bytes N]\nCopy FILE to both sites of the link (mode 0600) and set link.psk_file.")
	}
	file, rest := splitPositional(args)
	if err := fs.Parse(rest); err != nil {
		return usageCode(err)
	}
	if file == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	if *n < 48 {
		fmt.Fprintln(stderr, "qkdkms psk: --bytes must be at least 48")
		return 2
	}
	b := make([]byte, *n)
	_, _ = rand.Read(b)
	defer clear(b)
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms psk: %v\n", err)
		return 1
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		fmt.Fprintf(stderr, "qkdkms psk: %v\n", err)
		return 1
	}
	if err := f.Close(); err != nil {
		fmt.Fprintf(stderr, "qkdkms psk: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %d bytes to %s (mode 0600)\n", *n, file)
	return 0
}

// splitPositional takes the first argument when it is not a flag.
func splitPositional(args []string) (string, []string) {
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		return args[0], args[1:]
	}
	return "", args
}

func usageCode(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}

// adminCall parses admin flags plus extra ones, checks the arguments
// (check may be nil), runs call and prints its answer (JSON with --json,
// else with show).
func adminCall[T any](ctx context.Context, name, synopsis string, args []string, stdout, stderr io.Writer,
	extra func(fs *flag.FlagSet), check func(pos []string) error,
	call func(ctx context.Context, c *node.AdminClient, pos []string) (T, error), show func(io.Writer, T)) int {
	a := newAdminFlags(name, synopsis, stderr)
	if extra != nil {
		extra(a.fs)
	}
	var pos []string
	for len(args) > 0 {
		if err := a.fs.Parse(args); err != nil {
			return usageCode(err)
		}
		args = a.fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	if check != nil {
		if err := check(pos); err != nil {
			fmt.Fprintf(stderr, "qkdkms %s: %v\n", name, err)
			return 2
		}
	}
	c, err := a.client()
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms %s: %v\n", name, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	res, err := call(ctx, c, pos)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms %s: %v\n", name, err)
		return 1
	}
	if a.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
		return 0
	}
	show(stdout, res)
	return 0
}

// nArgs checks the number of positional arguments.
func nArgs(n int) func([]string) error {
	return func(pos []string) error {
		if len(pos) != n {
			return fmt.Errorf("want %d argument(s), got %d %v", n, len(pos), pos)
		}
		return nil
	}
}

func runLink(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: qkdkms link status | link eve P --peer KME [admin flags]")
		return 2
	}
	switch args[0] {
	case "status":
		return adminCall(ctx, "link status", "link status [admin flags]", args[1:], stdout, stderr, nil, nArgs(0),
			func(ctx context.Context, c *node.AdminClient, _ []string) ([]link.Status, error) { return c.Links(ctx) },
			printLinks)
	case "eve":
		var peer string
		return adminCall(ctx, "link eve", "link eve P --peer KME [admin flags]  (P in [0,1]; 0 turns the eavesdropper off)", args[1:], stdout, stderr,
			func(fs *flag.FlagSet) { fs.StringVar(&peer, "peer", "", "peer KME ID of the link (required)") },
			func(pos []string) error {
				if err := nArgs(1)(pos); err != nil {
					return err
				}
				if peer == "" {
					return errors.New("--peer is required")
				}
				_, err := strconv.ParseFloat(pos[0], 64)
				return err
			},
			func(ctx context.Context, c *node.AdminClient, pos []string) ([]link.Status, error) {
				p, _ := strconv.ParseFloat(pos[0], 64)
				return c.SetEve(ctx, peer, p)
			}, printLinks)
	default:
		fmt.Fprintf(stderr, "qkdkms link: unknown command %q (status, eve)\n", args[0])
		return 2
	}
}

func printLinks(w io.Writer, ls []link.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tROLE\tDRIVER\tUP\tSESSIONS\tABORTED\tQBER\tKEY RATE\tCOMMITTED\tEVE\tNOTE")
	for _, s := range ls {
		note := s.PluginMismatch
		if note == "" {
			note = s.LastError
		}
		drv := s.Driver.Driver
		if !s.Driver.OK {
			drv += " (device: " + s.Driver.LastError + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%d\t%d\t%.2f%%\t%.0f bit/s\t%d bits\t%.2f\t%s\n", s.Peer, s.Role, drv, s.Connected,
			s.Sessions, s.Aborted, 100*s.LastQBER, s.KeyRate, s.CommittedBits, s.Eve, note)
	}
	_ = tw.Flush()
	// The relay pools (node/CONFIG.md, "Relay pool").
	for _, s := range ls {
		if s.RelayTarget > 0 || s.RelayOut > 0 || s.RelayIn > 0 {
			fmt.Fprintf(w, "%s relay pool: out %d bytes, in %d bytes (target %d per direction)\n", s.Peer, s.RelayOut, s.RelayIn, s.RelayTarget)
		}
	}
	// The drivers' own figures: stream position and lag, device address
	// and reachability, model parameters.
	for _, s := range ls {
		if len(s.Driver.Details) == 0 {
			continue
		}
		keys := make([]string, 0, len(s.Driver.Details))
		for k := range s.Driver.Details {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(w, "%s (%s):", s.Peer, s.Driver.Driver)
		for _, k := range keys {
			fmt.Fprintf(w, " %s=%v", k, s.Driver.Details[k])
		}
		fmt.Fprintln(w)
	}
}

func runPlugin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: qkdkms plugin list | install FILE.wasm --name N --step S --version V [--abi 1] | use STEP NAME[@VERSION] | remove NAME[@VERSION] [admin flags]")
		return 2
	}
	switch args[0] {
	case "list":
		return adminCall(ctx, "plugin list", "plugin list [admin flags]", args[1:], stdout, stderr, nil, nArgs(0),
			func(ctx context.Context, c *node.AdminClient, _ []string) (node.PluginsResponse, error) {
				return c.Plugins(ctx)
			},
			printPlugins)
	case "install":
		var req node.InstallRequest
		return adminCall(ctx, "plugin install", "plugin install FILE.wasm --name N --step S --version V [--abi 1] [admin flags]", args[1:], stdout, stderr,
			func(fs *flag.FlagSet) {
				fs.StringVar(&req.Name, "name", "", "plugin name (required, not a shipped plugin's name)")
				fs.StringVar(&req.Step, "step", "", "step: sift, estimate, reconcile, verify or amplify (required)")
				fs.StringVar(&req.Version, "version", "", "plugin version (required)")
				fs.IntVar(&req.ABI, "abi", 1, "plugin ABI version")
				fs.StringVar(&req.SHA256, "sha256", "", "expected sha256 of the file (optional check)")
			},
			func(pos []string) error {
				if req.Name == "" || req.Step == "" || req.Version == "" {
					return errors.New("--name, --step and --version are required")
				}
				return nArgs(1)(pos)
			},
			func(ctx context.Context, c *node.AdminClient, pos []string) (node.PluginsResponse, error) {
				b, err := os.ReadFile(pos[0])
				if err != nil {
					return node.PluginsResponse{}, err
				}
				req.WASM = b
				return c.InstallPlugin(ctx, req)
			}, printPlugins)
	case "remove":
		return adminCall(ctx, "plugin remove", "plugin remove NAME[@VERSION] [admin flags]", args[1:], stdout, stderr, nil, nArgs(1),
			func(ctx context.Context, c *node.AdminClient, pos []string) (node.PluginsResponse, error) {
				return c.RemovePlugin(ctx, pos[0])
			}, printPlugins)
	case "use":
		return adminCall(ctx, "plugin use", "plugin use STEP NAME[@VERSION] [admin flags]", args[1:], stdout, stderr, nil, nArgs(2),
			func(ctx context.Context, c *node.AdminClient, pos []string) (node.PluginsResponse, error) {
				return c.UsePlugin(ctx, pos[0], pos[1])
			}, printPlugins)
	default:
		fmt.Fprintf(stderr, "qkdkms plugin: unknown command %q (list, install, use, remove)\n", args[0])
		return 2
	}
}

func printPlugins(w io.Writer, r node.PluginsResponse) {
	fmt.Fprintf(w, "site %s\n", r.KMEID)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tNAME\tVERSION\tSOURCE\tACTIVE\tSHA256")
	for _, p := range r.Plugins {
		act := ""
		if p.Active {
			act = "*"
		}
		sum := p.SHA256
		if len(sum) > 16 {
			sum = sum[:16] + "…"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Step, p.Name, p.Version, p.Source, act, sum)
	}
	_ = tw.Flush()
}
