package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"qkdkms/etsi/pki"
	"qkdkms/raftstore"
)

const certsUsage = `usage:
  qkdkms certs init     --pki DIR [--kme KME_ID --nodes N1,N2,... [--host H]...]
  qkdkms certs node     NAME --kme KME_ID --pki DIR [--host H]...
  qkdkms certs sae      NAME --pki DIR
  qkdkms certs operator NAME --kme KME_ID --pki DIR
  qkdkms certs revoke   NAME --pki DIR

init creates a demo CA (DIR/ca.crt, DIR/ca.key) unless one exists, and with
--kme/--nodes a node certificate per node. Node certificates carry the URI SAN
kme:KME_ID, CN NAME, and IP/DNS SANs 127.0.0.1, ::1, localhost, NAME, this
machine's host name and every --host. SAE certificates carry sae:NAME (URI SAN)
and CN NAME. Operator certificates carry kme-admin:KME_ID and may call the
site's admin API (join, remove, servers). Files: DIR/NAME.crt, DIR/NAME.key
(0600). Verify with: openssl verify -CAfile DIR/ca.crt DIR/NAME.crt
revoke adds the serial of DIR/NAME.crt to DIR/crl.pem (a CRL signed by the CA,
created when absent, replaced atomically); nodes with tls.crl_file pointing at a
copy refuse that certificate at its next handshake after SIGHUP or their poll.
`

func runCerts(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, certsUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("certs "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, certsUsage) }
	dir := fs.String("pki", "", "PKI directory (required)")
	kme := fs.String("kme", "", "KME (site) ID")
	nodes := fs.String("nodes", "", "init: comma-separated node names to issue certificates for")
	var hosts multiFlag
	fs.Var(&hosts, "host", "extra DNS name or IP for node certificates (repeatable)")

	// NAME may come before or after the flags.
	var name string
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		name, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if name == "" && fs.NArg() > 0 {
		name = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "qkdkms certs: unexpected arguments %v\n", fs.Args())
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(stderr, "qkdkms certs: --pki DIR is required")
		return 2
	}
	fail := func(err error) int { fmt.Fprintf(stderr, "qkdkms certs %s: %v\n", sub, err); return 1 }
	hostName, _ := os.Hostname()

	switch sub {
	case "init":
		if name != "" {
			fmt.Fprintf(stderr, "qkdkms certs init: unexpected argument %q\n", name)
			return 2
		}
		if (*kme == "") != (*nodes == "") {
			fmt.Fprintln(stderr, "qkdkms certs init: --kme and --nodes go together")
			return 2
		}
		ca, err := pki.Init(*dir)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "CA: %s\n", filepath.Join(*dir, "ca.crt"))
		if *nodes != "" {
			for _, nn := range strings.Split(*nodes, ",") {
				if err := issueNode(ca, *dir, strings.TrimSpace(nn), *kme, hostName, hosts, stdout); err != nil {
					return fail(err)
				}
			}
		}
		return 0
	case "revoke":
		if name == "" {
			fmt.Fprintln(stderr, "qkdkms certs revoke: NAME is required")
			return 2
		}
		ca, err := pki.Load(*dir)
		if err != nil {
			return fail(err)
		}
		cert, err := pki.LoadCert(filepath.Join(*dir, name+".crt"))
		if err != nil {
			return fail(err)
		}
		path := filepath.Join(*dir, pki.CRLFile)
		serials, err := ca.Revoke(path, cert)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "revoked %s (serial %x); %s lists %d certificate(s): copy it to each node's tls.crl_file, then kill -HUP or wait for the poll\n",
			name, cert.SerialNumber, path, len(serials))
		return 0
	case "node", "sae", "operator":
		if name == "" {
			fmt.Fprintf(stderr, "qkdkms certs %s: NAME is required\n", sub)
			return 2
		}
		if sub != "sae" && *kme == "" {
			fmt.Fprintf(stderr, "qkdkms certs %s: --kme KME_ID is required\n", sub)
			return 2
		}
		ca, err := pki.Load(*dir)
		if err != nil {
			return fail(fmt.Errorf("%w (run 'qkdkms certs init --pki %s' first)", err, *dir))
		}
		switch sub {
		case "node":
			err = issueNode(ca, *dir, name, *kme, hostName, hosts, stdout)
		case "sae":
			err = writeLeaf(*dir, name, stdout)(ca.IssueSAE(name))
		case "operator":
			err = writeLeaf(*dir, name, stdout)(ca.IssueOperator(name, *kme))
		}
		if err != nil {
			return fail(err)
		}
		return 0
	default:
		fmt.Fprintf(stderr, "qkdkms certs: unknown subcommand %q\n\n%s", sub, certsUsage)
		return 2
	}
}

func issueNode(ca *pki.CA, dir, name, kme, hostName string, hosts []string, stdout io.Writer) error {
	all := append([]string{hostName}, hosts...)
	return writeLeaf(dir, name, stdout)(ca.IssueNode(name, kme, all))
}

func writeLeaf(dir, name string, stdout io.Writer) func(pki.Leaf, error) error {
	return func(l pki.Leaf, err error) error {
		if err != nil {
			return err
		}
		if err := l.Write(dir, name); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s and %s\n", filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
		return nil
	}
}

func runKEK(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "usage: qkdkms kek FILE\nWrites a new random 256-bit site key-encryption key (hex) to FILE with mode 0600.\nEvery node of a site needs the same KEK; it never overwrites an existing file.")
		if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
			return 0
		}
		return 2
	}
	if _, err := raftstore.GenerateKEK(args[0]); err != nil {
		fmt.Fprintf(stderr, "qkdkms kek: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s (mode 0600)\n", args[0])
	return 0
}
