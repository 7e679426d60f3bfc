package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"qkdkms/node"
	"qkdkms/node/kme"
)

const adminFlagsHelp = `admin flags:
  --server HOST:PORT[,HOST:PORT...]  nodes of the site to ask (any node forwards to the leader)
  --ca FILE --cert FILE --key FILE   CA bundle and an operator (kme-admin:) or node certificate
  --pki DIR --identity NAME          shorthand for DIR/ca.crt, DIR/NAME.crt, DIR/NAME.key
  --json                             print the answer as JSON
  --timeout D                        overall deadline (default 20s)
`

type adminFlags struct {
	fs                    *flag.FlagSet
	server, ca, cert, key string
	pkiDir, identity      string
	asJSON                bool
	timeout               time.Duration
}

func newAdminFlags(name, synopsis string, stderr io.Writer) *adminFlags {
	a := &adminFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	a.fs.SetOutput(stderr)
	a.fs.StringVar(&a.server, "server", "127.0.0.1:8443", "node address(es), comma-separated")
	a.fs.StringVar(&a.ca, "ca", "", "CA bundle")
	a.fs.StringVar(&a.cert, "cert", "", "client certificate")
	a.fs.StringVar(&a.key, "key", "", "client key")
	a.fs.StringVar(&a.pkiDir, "pki", "", "PKI directory")
	a.fs.StringVar(&a.identity, "identity", "", "certificate name in --pki")
	a.fs.BoolVar(&a.asJSON, "json", false, "print JSON")
	a.fs.DurationVar(&a.timeout, "timeout", 20*time.Second, "overall deadline")
	a.fs.Usage = func() { fmt.Fprintf(stderr, "usage: qkdkms %s\n%s", synopsis, adminFlagsHelp) }
	return a
}

func (a *adminFlags) client() (*node.AdminClient, error) {
	ca, cert, key := a.ca, a.cert, a.key
	if a.pkiDir != "" {
		if a.identity == "" {
			return nil, errors.New("--pki needs --identity NAME")
		}
		if ca == "" {
			ca = filepath.Join(a.pkiDir, "ca.crt")
		}
		if cert == "" {
			cert = filepath.Join(a.pkiDir, a.identity+".crt")
		}
		if key == "" {
			key = filepath.Join(a.pkiDir, a.identity+".key")
		}
	}
	if ca == "" || cert == "" || key == "" {
		return nil, errors.New("need --ca, --cert and --key (or --pki DIR --identity NAME)")
	}
	var addrs []string
	for _, s := range strings.Split(a.server, ",") {
		if s = strings.TrimSpace(s); s != "" {
			addrs = append(addrs, s)
		}
	}
	return node.NewAdminClient(addrs, ca, cert, key)
}

func runAdmin(ctx context.Context, name, synopsis string, args []string, stdout, stderr io.Writer,
	extra func(fs *flag.FlagSet) func() error,
	call func(ctx context.Context, c *node.AdminClient) (node.ServersResponse, error)) int {
	check := func() error { return nil }
	return adminCall(ctx, name, synopsis, args, stdout, stderr,
		func(fs *flag.FlagSet) {
			if extra != nil {
				check = extra(fs)
			}
		},
		func(pos []string) error {
			if err := nArgs(0)(pos); err != nil {
				return err
			}
			return check()
		},
		func(ctx context.Context, c *node.AdminClient, _ []string) (node.ServersResponse, error) {
			return call(ctx, c)
		},
		printServers)
}

func printServers(w io.Writer, r node.ServersResponse) {
	fmt.Fprintf(w, "site %s, leader %s\n", r.KMEID, r.Leader)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tLEADER")
	for _, s := range r.Servers {
		l := ""
		if s.Leader {
			l = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.ID, s.Address, s.Suffrage, l)
	}
	_ = tw.Flush()
}

func runServers(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runAdmin(ctx, "servers", "servers [admin flags]", args, stdout, stderr, nil,
		func(ctx context.Context, c *node.AdminClient) (node.ServersResponse, error) { return c.Servers(ctx) })
}

func runJoin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var id, addr string
	return runAdmin(ctx, "join", "join --id ID --address HOST:PORT [admin flags]", args, stdout, stderr,
		func(fs *flag.FlagSet) func() error {
			fs.StringVar(&id, "id", "", "node ID to add (required)")
			fs.StringVar(&addr, "address", "", "its advertised address (required)")
			return func() error {
				if id == "" || addr == "" {
					return errors.New("--id and --address are required")
				}
				return nil
			}
		},
		func(ctx context.Context, c *node.AdminClient) (node.ServersResponse, error) {
			return c.Join(ctx, id, addr)
		})
}

func runRemove(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var id string
	return runAdmin(ctx, "remove", "remove --id ID [admin flags]", args, stdout, stderr,
		func(fs *flag.FlagSet) func() error {
			fs.StringVar(&id, "id", "", "node ID to remove (required)")
			return func() error {
				if id == "" {
					return errors.New("--id is required")
				}
				return nil
			}
		},
		func(ctx context.Context, c *node.AdminClient) (node.ServersResponse, error) { return c.Remove(ctx, id) })
}

func init() {
	register("conn", "connections: conn delete MASTER SLAVE [admin flags]", runConn)
}

// runConn manages a site's connections.
func runConn(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "delete" {
		fmt.Fprintln(stderr, "usage: qkdkms conn delete MASTER_SAE_ID SLAVE_SAE_ID [admin flags]")
		return 2
	}
	return adminCall(ctx, "conn delete", "conn delete MASTER_SAE_ID SLAVE_SAE_ID [admin flags]  (at both sites; its pool and unfetched keys are burned)",
		args[1:], stdout, stderr, nil, nArgs(2),
		func(ctx context.Context, c *node.AdminClient, pos []string) (kme.DeleteResult, error) {
			return c.DeleteConnection(ctx, pos[0], pos[1])
		},
		func(w io.Writer, r kme.DeleteResult) {
			fmt.Fprintf(w, "connection %s → %s: %s at %s", r.Master, r.Slave, r.Here, r.KMEID)
			if r.PeerKME != "" {
				fmt.Fprintf(w, ", %s at %s", r.Peer, r.PeerKME)
			}
			fmt.Fprintln(w)
		})
}
