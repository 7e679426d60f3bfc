package main

// backup, restore, restore reconcile, positions (docs/OPERATIONS.md
// "Backup and restore").

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"qkdkms/node"
	"qkdkms/raftstore"
)

func init() {
	register("backup", "sealed backup of a site through its leader: backup --out FILE [admin flags]", runBackup)
	register("restore", "seed a new node from a backup: restore --file FILE --config FILE [serve flags] | restore reconcile --peer KME --positions FILE [admin flags]", runRestore)
	register("positions", "a site's pool positions and the peers a restored site waits for: positions [admin flags]", runPositions)
}

func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var out string
	return adminCall(ctx, "backup", "backup --out FILE [admin flags]", args, stdout, stderr,
		func(fs *flag.FlagSet) {
			fs.StringVar(&out, "out", "", "file to write (created, never overwritten, mode 0600)")
		},
		func(pos []string) error {
			if out == "" {
				return errors.New("--out FILE is required")
			}
			return nArgs(0)(pos)
		},
		func(ctx context.Context, c *node.AdminClient, _ []string) (raftstore.BackupHeader, error) {
			res, err := c.Backup(ctx)
			if err != nil {
				return raftstore.BackupHeader{}, err
			}
			return res.Header, writeNew(out, res.File)
		},
		func(w io.Writer, h raftstore.BackupHeader) {
			fmt.Fprintf(w, "backup of site %s at index %d (term %d, cluster version %d), digest %s, written to %s\n",
				h.KMEID, h.Index, h.Term, h.ClusterVersion, h.Digest, out)
		})
}

// writeNew writes data to a new file with mode 0600 and syncs it.
func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func runRestore(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "reconcile" {
		return runReconcile(ctx, args[1:], stdout, stderr)
	}
	f := newServeFlags(stderr)
	var file string
	f.fs.StringVar(&file, "file", "", "the backup file (qkdkms backup --out)")
	f.fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: qkdkms restore --file FILE --config FILE [serve flags]")
		fmt.Fprintln(stderr, "Seeds the empty data_dir of a node of a NEW site (node_id, kme_id, kek_file or kek_env, bootstrap: the new")
		fmt.Fprintln(stderr, "site's voters) from the backup; then start the node with qkdkms serve. Serve flags:")
		f.fs.PrintDefaults()
	}
	cfg, err := f.load(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "qkdkms restore: %v\n", err)
		return 2
	}
	if file == "" {
		fmt.Fprintln(stderr, "qkdkms restore: --file FILE is required")
		return 2
	}
	var kek []byte
	if cfg.KEKFile != "" {
		kek, err = raftstore.LoadKEK(cfg.KEKFile)
	} else {
		kek, err = raftstore.KEKFromEnv(cfg.KEKEnv)
	}
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms restore: %v\n", err)
		return 1
	}
	defer clear(kek)
	b, err := node.RestoreDataDir(node.RestoreOptions{File: file, KMEID: cfg.KMEID, KEK: kek, DataDir: cfg.DataDir, Bootstrap: cfg.Bootstrap})
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms restore: %v\n", err)
		return 1
	}
	h := b.Header
	fmt.Fprintf(stdout, "restored %s into %s: site %s at index %d taken %s, digest %s\n",
		file, cfg.DataDir, h.KMEID, h.Index, h.Time.Format("2006-01-02T15:04:05Z"), b.RestoredDigest())
	if p := b.Pending(); len(p) > 0 {
		fmt.Fprintf(stdout, "the site serves no key shared with %s until: qkdkms restore reconcile --peer KME --positions FILE\n",
			strings.Join(p, ", "))
	}
	return 0
}

func runReconcile(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var peer, file string
	return adminCall(ctx, "restore reconcile", "restore reconcile --peer KME --positions FILE [admin flags]", args, stdout, stderr,
		func(fs *flag.FlagSet) {
			fs.StringVar(&peer, "peer", "", "the peer site's KME ID")
			fs.StringVar(&file, "positions", "", "the peer site's positions: qkdkms positions --json [its admin flags] > FILE")
		},
		func(pos []string) error {
			if peer == "" || file == "" {
				return errors.New("--peer KME and --positions FILE are required")
			}
			return nArgs(0)(pos)
		},
		func(ctx context.Context, c *node.AdminClient, _ []string) (node.PositionsResponse, error) {
			data, err := os.ReadFile(file)
			if err != nil {
				return node.PositionsResponse{}, err
			}
			var p node.PositionsResponse
			if err := json.Unmarshal(data, &p); err != nil {
				return node.PositionsResponse{}, fmt.Errorf("%s: %w", file, err)
			}
			return c.Reconcile(ctx, peer, p)
		},
		printPositions)
}

func runPositions(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return adminCall(ctx, "positions", "positions [admin flags]", args, stdout, stderr, nil, nArgs(0),
		func(ctx context.Context, c *node.AdminClient, _ []string) (node.PositionsResponse, error) {
			return c.Positions(ctx)
		},
		printPositions)
}

func printPositions(w io.Writer, p node.PositionsResponse) {
	fmt.Fprintf(w, "site %s\n", p.KMEID)
	if len(p.Pending) > 0 {
		fmt.Fprintf(w, "restored, not reconciled with: %s\n", strings.Join(p.Pending, ", "))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MASTER\tSLAVE\tSOURCE\tTARGET\tCARVE\tEND")
	for _, c := range p.Conns {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", c.Conn.MasterSAE, c.Conn.SlaveSAE, c.Conn.SourceKME, c.Conn.TargetKME, c.Carve, c.End)
	}
	_ = tw.Flush()
}
