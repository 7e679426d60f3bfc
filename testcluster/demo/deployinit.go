package demo

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"qkdkms/testcluster/harness"
)

// DemoInit is `qkdkms demo-init`: the CLI shape for the dispatch table. The
// compose deployment's init service runs it (`demo-init --out /qkd
// --compose`) before the nodes start; running it again keeps the CA, the
// certificates and the KEKs.
func DemoInit(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo-init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o harness.InitOptions
	var saes string
	fs.StringVar(&o.Out, "out", ".demo", "directory to write pki/, kek/, config/ into")
	fs.IntVar(&o.Nodes, "nodes", 3, "nodes per site")
	fs.StringVar(&o.Sender, "sender", harness.DefaultSender, "KME ID of the first site")
	fs.StringVar(&o.Receiver, "receiver", harness.DefaultReceiver, "KME ID of the second site")
	fs.StringVar(&saes, "sae", "ghi,jkl", "comma-separated SAE IDs to issue client certificates for")
	fs.BoolVar(&o.Compose, "compose", false, "docker-compose naming: host <kme>-<i> (underscores as dashes), listen 0.0.0.0:8443")
	fs.IntVar(&o.SenderPort, "sender-port", 8443, "first site's node 1 port (loopback mode)")
	fs.IntVar(&o.ReceiverPort, "receiver-port", 9443, "second site's node 1 port (loopback mode)")
	fs.IntVar(&o.SenderSeedPort, "sender-seed-port", 8000, "first site's seed API port on node 1 (0 = off; with --compose only under --seed-api)")
	fs.IntVar(&o.ReceiverSeedPort, "receiver-seed-port", 8001, "second site's seed API port on node 1 (0 = off; with --compose only under --seed-api)")
	fs.BoolVar(&o.SeedAPI, "seed-api", false, "with --compose: serve the plain-HTTP seed API (no TLS, no authentication) on node 1 of each site; "+
		"deploy/docker-compose.seed.yml publishes it on the host's 127.0.0.1 only. Off by default")
	fs.StringVar(&o.LogLevel, "log-level", "info", "node log level")
	linkSpec := linkFlags(fs, "step plugin directory as the nodes see it (default: bin/plugins, or /plugins with --compose)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: qkdkms demo-init [flags]")
		fmt.Fprintln(stderr, "Writes a demo PKI, site KEKs and node configs for two sites (kept if present).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	o.SAEs = nil
	for _, s := range strings.Split(saes, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.SAEs = append(o.SAEs, s)
		}
	}
	if o.Compose {
		o.SenderPort, o.ReceiverPort = harness.ComposePort, harness.ComposePort
	}
	if link := linkSpec(); link != nil {
		if link.PluginDir == "" && !link.Native {
			link.PluginDir = "/plugins"
			if !o.Compose {
				abs, err := filepath.Abs(filepath.Join("bin", "plugins"))
				if err != nil {
					fmt.Fprintf(stderr, "qkdkms demo-init: %v\n", err)
					return 1
				}
				link.PluginDir = abs
			}
		}
		o.Link = link
	}
	l, err := harness.DemoInitLayout(o)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms demo-init: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s: PKI in %s\n", l.Dir, l.PKIDir)
	for _, s := range l.Sites {
		for _, n := range s.Nodes {
			fmt.Fprintf(stdout, "  %-16s %-24s config %s\n", n.ID, n.Advertise, n.ConfigPath)
		}
		if s.SeedAddr != "" {
			fmt.Fprintf(stdout, "  %-16s seed API on %s\n", s.KMEID, s.SeedAddr)
		}
	}
	if o.Compose && !o.SeedAPI {
		fmt.Fprintln(stdout, "  seed API off (plain HTTP, no authentication); opt in with --seed-api and deploy/docker-compose.seed.yml")
	}
	return 0
}
