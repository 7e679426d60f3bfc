package etsi014

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// keyLike finds anything in a log that could be a key of 64 bits or more:
// a run of base64 or hexadecimal characters.
var (
	keyLike = regexp.MustCompile(`[A-Za-z0-9+/]{11,}={0,2}|[0-9a-fA-F]{16,}`)
	uuidRE  = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
)

// TestNoKeyBitsInLogs: neither the driver's log nor its errors (which the
// link logs) carry key bits, on success and on every fault; the log does
// carry the calls.
func TestNoKeyBitsInLogs(t *testing.T) {
	devLog, devBuf := captureLog()
	e := newEmulator(t, EmulatorConfig{Log: devLog})
	log, buf := captureLog()
	master := newClient(t, e.A, log, func(o *Options) { o.MaxKeysPerRequest = 4 })
	slave := newClient(t, e.B, log, func(o *Options) { o.MaxKeysPerRequest = 4 })
	ctx := context.Background()

	var keys [][]byte
	var errs []string
	ids, key, err := master.Draw(ctx, 10*32)
	if err != nil {
		t.Fatal(err)
	}
	keys = append(keys, key)
	got, err := slave.Fetch(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	keys = append(keys, got)
	for _, f := range []FaultKind{FaultMalformed, FaultShortKeys, FaultWrongIDs, FaultDrop, FaultUnavailable, FaultCorrupt} {
		for _, at := range []*Device{e.A, e.B} {
			at.SetFault(Fault{Kind: f, Calls: 1})
			ids, key, err := master.Draw(ctx, 3*32)
			if err == nil {
				keys = append(keys, key)
				var got []byte
				got, err = slave.Fetch(ctx, ids)
				keys = append(keys, got)
			}
			if err != nil {
				if !errors.Is(err, ErrDevice) {
					t.Fatalf("fault %v at %s: %v", f, at.kmeID, err)
				}
				errs = append(errs, err.Error())
			}
			at.SetFault(Fault{})
		}
	}
	if len(errs) < 10 {
		t.Fatalf("only %d faults failed a call: %q", len(errs), errs)
	}

	logs := buf.String()
	for _, want := range []string{`"op":"enc_keys"`, `"op":"dec_keys"`, "etsi014 device call failed", ids[0]} {
		if !strings.Contains(logs, want) {
			t.Fatalf("the driver's log lacks %q:\n%s", want, logs)
		}
	}
	all := logs + devBuf.String() + strings.Join(errs, "\n")
	// Any hex, base64, decimal or raw rendering of 6 or more key bytes,
	// from any offset, contains one of these windows.
	for _, k := range keys {
		for i := 0; i+6 <= len(k); i++ {
			w := k[i : i+6]
			for _, enc := range []string{hex.EncodeToString(w), base64.StdEncoding.EncodeToString(w),
				strings.Trim(fmt.Sprint(w), "[]"), string(w)} {
				if strings.Contains(all, enc) {
					t.Fatalf("key bytes %q appear in the logs or errors", enc)
				}
			}
		}
	}
	// The driver's own lines and errors hold no key-like string at all
	// once key IDs and API paths are taken out.
	own := uuidRE.ReplaceAllString(logs+strings.Join(errs, "\n"), "")
	own = strings.ReplaceAll(own, "/api/v1/keys/", " ")
	for _, m := range keyLike.FindAllString(own, -1) {
		if strings.ToLower(m) != m || strings.ContainsAny(m, "0123456789+/") {
			t.Errorf("key-like string %q in the driver's log or errors", m)
		}
	}
}
