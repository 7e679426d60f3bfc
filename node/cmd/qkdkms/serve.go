package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"qkdkms/node"
)

// serveFlags are the flags of `qkdkms serve`; each one set on the command
// line overrides the config file's field.
type serveFlags struct {
	fs     *flag.FlagSet
	config string
	set    map[string]func(*node.Config) error
}

func newServeFlags(stderr io.Writer) *serveFlags {
	f := &serveFlags{fs: flag.NewFlagSet("serve", flag.ContinueOnError), set: map[string]func(*node.Config) error{}}
	f.fs.SetOutput(stderr)
	f.fs.StringVar(&f.config, "config", "", "JSON config file (see node/CONFIG.md); flags override its fields")
	str := func(name, usage string, apply func(*node.Config, string)) {
		var v string
		f.fs.StringVar(&v, name, "", usage)
		f.set[name] = func(c *node.Config) error { apply(c, v); return nil }
	}
	dur := func(name, usage string, apply func(*node.Config, node.Duration)) {
		var v time.Duration
		f.fs.DurationVar(&v, name, 0, usage)
		f.set[name] = func(c *node.Config) error { apply(c, node.Duration(v)); return nil }
	}
	str("node-id", "node_id: Raft server ID, unique in the site", func(c *node.Config, v string) { c.NodeID = v })
	str("kme-id", "kme_id: the site's KME ID", func(c *node.Config, v string) { c.KMEID = v })
	str("listen", "listen: TLS port for API, admin, metrics and Raft (default "+node.DefaultListen+")", func(c *node.Config, v string) { c.Listen = v })
	str("advertise", "advertise: address other nodes dial (default: listen)", func(c *node.Config, v string) { c.Advertise = v })
	str("data-dir", "data_dir: Raft log, stable store and snapshots", func(c *node.Config, v string) { c.DataDir = v })
	str("ca", "tls.ca: CA bundle (PEM)", func(c *node.Config, v string) { c.TLS.CA = v })
	str("cert", "tls.cert: node certificate (PEM)", func(c *node.Config, v string) { c.TLS.Cert = v })
	str("key", "tls.key: node private key (PEM)", func(c *node.Config, v string) { c.TLS.Key = v })
	str("crl", "tls.crl_file: certificate revocation list (PEM X509 CRL signed by tls.ca), reloaded with the certificates", func(c *node.Config, v string) { c.TLS.CRLFile = v })
	str("kek-file", "kek_file: site key-encryption key file (0600)", func(c *node.Config, v string) { c.KEKFile, c.KEKEnv = v, "" })
	str("kek-env", "kek_env: environment variable holding the KEK (hex)", func(c *node.Config, v string) { c.KEKEnv, c.KEKFile = v, "" })
	str("seed-listen", "seed_listen: plain-HTTP seed API address (\"\" = off)", func(c *node.Config, v string) { c.SeedListen = v })
	str("log-level", "log.level: debug, info, warn, error", func(c *node.Config, v string) { c.Log.Level = v })
	str("log-format", "log.format: text or json", func(c *node.Config, v string) { c.Log.Format = v })
	str("audit-file", "log.audit_file: ETSI audit records file", func(c *node.Config, v string) { c.Log.AuditFile = v })
	dur("raft-heartbeat-timeout", "raft.heartbeat_timeout", func(c *node.Config, v node.Duration) { c.Raft.HeartbeatTimeout = v })
	dur("raft-election-timeout", "raft.election_timeout", func(c *node.Config, v node.Duration) { c.Raft.ElectionTimeout = v })
	dur("raft-leader-lease-timeout", "raft.leader_lease_timeout", func(c *node.Config, v node.Duration) { c.Raft.LeaderLeaseTimeout = v })

	// An inherited listening socket (fd 3 and up, as a supervisor or a test
	// harness that holds the port passes it): no moment in which the port
	// is free for another program to take.
	fd := func(name, usage string, apply func(*node.Config, net.Listener)) {
		var v int
		f.fs.IntVar(&v, name, 0, usage)
		f.set[name] = func(c *node.Config) error {
			if v < 3 {
				return fmt.Errorf("-%s %d: not an inherited descriptor (3 and up)", name, v)
			}
			file := os.NewFile(uintptr(v), name)
			defer file.Close()
			ln, err := net.FileListener(file)
			if err != nil {
				return fmt.Errorf("-%s %d: %w", name, v, err)
			}
			apply(c, ln)
			return nil
		}
	}
	fd("listen-fd", "serve on this inherited listening socket instead of binding listen", func(c *node.Config, ln net.Listener) {
		c.Listener, c.Listen = ln, ln.Addr().String()
	})
	fd("seed-listen-fd", "serve the seed API on this inherited listening socket instead of binding seed_listen", func(c *node.Config, ln net.Listener) {
		c.SeedListener, c.SeedListen = ln, ln.Addr().String()
	})

	var boot string
	f.fs.StringVar(&boot, "bootstrap", "", "bootstrap: the static site, ID=HOST:PORT,ID=HOST:PORT,...")
	f.set["bootstrap"] = func(c *node.Config) error {
		m, err := parsePairs(boot)
		if err != nil {
			return fmt.Errorf("-bootstrap: %w", err)
		}
		c.Bootstrap = m
		return nil
	}
	var peers multiFlag
	f.fs.Var(&peers, "peer", "peers: a peer site, KME=HOST:PORT[,HOST:PORT...]; repeat per site")
	f.set["peer"] = func(c *node.Config) error {
		c.Peers = map[string][]string{}
		for _, p := range peers {
			kme, addrs, ok := strings.Cut(p, "=")
			if !ok || kme == "" || addrs == "" {
				return fmt.Errorf("-peer %q: want KME=HOST:PORT[,HOST:PORT...]", p)
			}
			c.Peers[kme] = append(c.Peers[kme], strings.Split(addrs, ",")...)
		}
		return nil
	}
	f.fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: qkdkms serve [--config FILE] [flags]")
		fmt.Fprintln(stderr, "Runs one KME node. Flags override the config file's fields.")
		f.fs.PrintDefaults()
	}
	return f
}

// load reads the config file (if any) and applies the flags that were set.
func (f *serveFlags) load(args []string) (node.Config, error) {
	if err := f.fs.Parse(args); err != nil {
		return node.Config{}, err
	}
	if f.fs.NArg() > 0 {
		return node.Config{}, fmt.Errorf("unexpected arguments: %v", f.fs.Args())
	}
	var cfg node.Config
	if f.config != "" {
		c, err := node.LoadConfig(f.config)
		if err != nil {
			return node.Config{}, err
		}
		cfg = c
	}
	var errs []error
	f.fs.Visit(func(fl *flag.Flag) {
		if apply, ok := f.set[fl.Name]; ok {
			errs = append(errs, apply(&cfg))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return node.Config{}, err
	}
	cfg = cfg.WithDefaults()
	return cfg, cfg.Validate()
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newServeFlags(stderr)
	cfg, err := f.load(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms serve: %v\n", err)
		return 2
	}
	n, err := node.New(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms serve: %v\n", err)
		return 1
	}
	n.Start()
	// SIGHUP reloads tls.ca, tls.cert/tls.key and tls.crl_file without a
	// restart (node/CONFIG.md, Rotation and revocation).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := n.ReloadTLS(); err != nil {
					n.Logger().Error("SIGHUP: TLS reload failed; the previous material stays in use", "err", err)
				} else {
					n.Logger().Info("SIGHUP: TLS material checked")
				}
			}
		}
	}()
	<-ctx.Done()
	n.Logger().Info("shutting down (signal)")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Close(sctx); err != nil {
		fmt.Fprintf(stderr, "qkdkms serve: shutdown: %v\n", err)
		return 1
	}
	return 0
}

// parsePairs parses "a=x,b=y".
func parsePairs(s string) (map[string]string, error) {
	m := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return m, nil
	}
	for _, p := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("%q: want ID=HOST:PORT", p)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("%q listed twice", k)
		}
		m[k] = v
	}
	return m, nil
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
