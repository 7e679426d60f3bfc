package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"qkdkms/etsi"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

const cliUsage = `usage: qkdkms sae status|enc|dec [flags] SAE_ID

  status SLAVE   status of the connection from this SAE (master) to SLAVE
  enc    SLAVE   new keys shared with SLAVE            (--number, --size, --additional)
  dec    MASTER  keys MASTER obtained for this SAE     (--key-id, repeatable)

The SAE is the one named in --cert. Output: the KME's JSON answer on
stdout; on refusal the ETSI Error object on stdout and exit status 1.
Exit status 2: usage or local error.

flags (anywhere on the line; defaults from QKDKMS_KME, QKDKMS_CERT,
QKDKMS_KEY, QKDKMS_CA when set):
`

// RunCLI implements "qkdkms sae …"; args are the words after "sae".
func RunCLI(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "status" && args[0] != "enc" && args[0] != "dec") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, cliUsage)
			return 0
		}
		fmt.Fprint(stderr, cliUsage)
		return 2
	}
	cmd := args[0]
	fs := flag.NewFlagSet("qkdkms sae "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, cliUsage); fs.PrintDefaults() }
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return def
	}
	kme := fs.String("kme", env("QKDKMS_KME", "https://127.0.0.1:8443"), "KME base URL")
	certFile := fs.String("cert", env("QKDKMS_CERT", ""), "SAE certificate (PEM)")
	keyFile := fs.String("key", env("QKDKMS_KEY", ""), "SAE private key (PEM)")
	caFile := fs.String("ca", env("QKDKMS_CA", ""), "CA bundle (PEM)")
	number := fs.Int("number", 0, "enc: number of keys (0 = default 1)")
	size := fs.Int("size", 0, "enc: key size in bits (0 = the connection's key_size)")
	get := fs.Bool("get", false, "use the GET form of enc_keys / dec_keys")
	timeout := fs.Duration("timeout", 30*time.Second, "time limit for the call")
	var keyIDs, additional multiFlag
	fs.Var(&keyIDs, "key-id", "dec: key ID (repeatable)")
	fs.Var(&additional, "additional", "enc: additional slave SAE ID (repeatable)")

	// Accept flags before and after the positional SAE ID.
	var pos []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "qkdkms sae %s: want exactly one SAE ID, got %d\n", cmd, len(pos))
		return 2
	}
	if *certFile == "" || *keyFile == "" || *caFile == "" {
		fmt.Fprintf(stderr, "qkdkms sae %s: --cert, --key and --ca are required\n", cmd)
		return 2
	}
	other := pos[0]
	switch {
	case cmd != "enc" && (*number != 0 || *size != 0 || len(additional) > 0):
		fmt.Fprintf(stderr, "qkdkms sae %s: --number, --size and --additional belong to enc\n", cmd)
		return 2
	case cmd != "dec" && len(keyIDs) > 0:
		fmt.Fprintf(stderr, "qkdkms sae %s: --key-id belongs to dec\n", cmd)
		return 2
	case cmd == "dec" && len(keyIDs) == 0:
		fmt.Fprintln(stderr, "qkdkms sae dec: give at least one --key-id")
		return 2
	case cmd == "dec" && *get && len(keyIDs) != 1:
		fmt.Fprintln(stderr, "qkdkms sae dec --get takes exactly one --key-id")
		return 2
	case cmd == "enc" && *get && len(additional) > 0:
		fmt.Fprintln(stderr, "qkdkms sae enc --get cannot carry --additional")
		return 2
	}
	c, err := NewFromFiles(*kme, *certFile, *keyFile, *caFile, Options{Timeout: *timeout})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	var out any
	switch cmd {
	case "status":
		out, err = c.Status(ctx, other)
	case "enc":
		var keys []Key
		if *get {
			keys, err = c.EncKeysGet(ctx, other, *number, *size)
		} else {
			keys, err = c.EncKeys(ctx, other, etsi.KeyRequest{Number: *number, Size: *size, AdditionalSlaveSAEIDs: additional})
		}
		out = container(keys)
	case "dec":
		var keys []Key
		if *get {
			var k Key
			k, err = c.DecKeyGet(ctx, other, keyIDs[0])
			keys = []Key{k}
		} else {
			keys, err = c.DecKeys(ctx, other, keyIDs...)
		}
		out = container(keys)
	}
	var apiErr *Error
	if errors.As(err, &apiErr) {
		body := apiErr.Body
		if !json.Valid(body) {
			body, _ = json.Marshal(etsi.Error{Message: apiErr.Error(), Details: []map[string]any{}})
		}
		fmt.Fprintf(stdout, "%s\n", strings.TrimSpace(string(body)))
		fmt.Fprintf(stderr, "qkdkms sae %s: %v\n", cmd, apiErr)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms sae %s: %v\n", cmd, err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	return 0
}

// container renders keys as an ETSI Key container.
func container(keys []Key) etsi.KeyContainer {
	kc := etsi.KeyContainer{Keys: make([]etsi.KeyObject, 0, len(keys))}
	for _, k := range keys {
		kc.Keys = append(kc.Keys, etsi.KeyObject{KeyID: k.ID, Key: base64.StdEncoding.EncodeToString(k.Bytes)})
	}
	return kc
}
