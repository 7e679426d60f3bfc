package etsi014

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"qkdkms/etsi/pki"
	"qkdkms/quantum"
)

// pkiFiles writes a CA and an SAE certificate into a test directory.
func pkiFiles(t *testing.T) (ca, cert, key string) {
	t.Helper()
	dir := t.TempDir()
	c, err := pki.Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := c.IssueSAE("site-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.Write(dir, "sae"); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "ca.crt"), filepath.Join(dir, "sae.crt"), filepath.Join(dir, "sae.key")
}

func TestOptions(t *testing.T) {
	ca, cert, key := pkiFiles(t)
	dir := t.TempDir()
	openKey := filepath.Join(dir, "open.key")
	b, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(openKey, b, 0o644); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.crt")

	base := map[string]any{"url": "https://qkd-a.example:8443", "sae_id": "site-a", "peer_sae_id": "site-b",
		"ca_file": ca, "cert_file": cert, "key_file": key}
	with := func(kv ...any) json.RawMessage {
		m := map[string]any{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	cases := []struct {
		name string
		opts json.RawMessage
		want string // "" means valid; else in the error
	}{
		{name: "defaults", opts: with()},
		{name: "all set", opts: with("key_size", 512, "max_keys_per_request", 64, "timeout", "2s", "url", "https://10.0.0.7/qkd/")},
		{name: "unknown option", opts: with("keysize", 256), want: `unknown field "keysize"`},
		{name: "trailing data", opts: json.RawMessage(string(with()) + ` {}`), want: "trailing data"},
		{name: "no options", opts: nil, want: "url: required"},
		{name: "http URL", opts: with("url", "http://qkd-a.example:8443"), want: "want an https URL"},
		{name: "URL without host", opts: with("url", "https:///api"), want: "no host"},
		{name: "URL with query", opts: with("url", "https://qkd-a/?x=1"), want: "no query"},
		{name: "URL with user", opts: with("url", "https://u:p@qkd-a/"), want: "user information"},
		{name: "no sae_id", opts: with("sae_id", nil), want: "sae_id: required"},
		{name: "bad sae_id", opts: with("sae_id", "a/b"), want: "not a valid SAE ID"},
		{name: "no peer_sae_id", opts: with("peer_sae_id", nil), want: "peer_sae_id: required"},
		{name: "peer is self", opts: with("peer_sae_id", "site-a"), want: "must differ"},
		{name: "key size not whole bytes", opts: with("key_size", 100), want: "key_size: 100 bits"},
		{name: "key size negative", opts: with("key_size", -256), want: "key_size: -256 bits"},
		{name: "key size too large", opts: with("key_size", 1<<20), want: "key_size: 1048576 bits"},
		{name: "key size a string", opts: with("key_size", "256"), want: "cannot unmarshal"},
		{name: "max keys negative", opts: with("max_keys_per_request", -1), want: "max_keys_per_request: -1"},
		{name: "max keys too many", opts: with("max_keys_per_request", 1<<17), want: "max_keys_per_request: 131072"},
		{name: "timeout negative", opts: with("timeout", "-1s"), want: "timeout: -1s"},
		{name: "timeout too long", opts: with("timeout", "1h"), want: "timeout: 1h0m0s"},
		{name: "timeout not a duration", opts: with("timeout", "soon"), want: "invalid duration"},
		{name: "timeout a number", opts: with("timeout", 10), want: "duration must be a string"},
		{name: "no ca_file", opts: with("ca_file", nil), want: "ca_file: required"},
		{name: "no cert_file", opts: with("cert_file", nil), want: "cert_file: required"},
		{name: "no key_file", opts: with("key_file", nil), want: "key_file: required"},
		{name: "missing ca_file", opts: with("ca_file", missing), want: "ca_file: pki: read CA bundle"},
		{name: "ca_file not PEM", opts: with("ca_file", notPEM), want: "no certificates"},
		{name: "missing cert_file", opts: with("cert_file", missing), want: "cert_file/key_file"},
		{name: "missing key_file", opts: with("key_file", missing+".key"), want: "pki: key file"},
		{name: "key file readable by others", opts: with("key_file", openKey), want: "must be 0600 or stricter"},
		{name: "cert and key do not match", opts: with("cert_file", ca), want: "cert_file/key_file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := quantum.Open("etsi014", tc.opts)
			if tc.want != "" {
				if err == nil {
					_ = d.Close()
					t.Fatalf("options %s accepted, want an error with %q", tc.opts, tc.want)
				}
				if !errors.Is(err, ErrOptions) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want ErrOptions with %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer d.Close()
			c, ok := d.(*Client)
			if !ok {
				t.Fatalf("driver is a %T, want *Client", d)
			}
			if _, ok := d.(quantum.KeyDevice); !ok {
				t.Fatal("driver is not a KeyDevice")
			}
			var in Options
			if err := json.Unmarshal(tc.opts, &in); err != nil {
				t.Fatal(err)
			}
			o := c.Options()
			if in.KeySize == 0 && o.KeySize != DefaultKeySize || in.KeySize != 0 && o.KeySize != in.KeySize {
				t.Errorf("key_size = %d", o.KeySize)
			}
			if in.MaxKeysPerRequest == 0 && o.MaxKeysPerRequest != DefaultMaxKeysPerRequest {
				t.Errorf("max_keys_per_request = %d", o.MaxKeysPerRequest)
			}
			if in.Timeout == 0 && o.Timeout.D() != 10*time.Second {
				t.Errorf("timeout = %v", o.Timeout.D())
			}
			if h := c.Health(); !h.OK || h.Details["reachable"] != nil || strings.HasSuffix(h.Details["url"].(string), "/") {
				t.Errorf("Health before any call = %+v", h)
			}
		})
	}
}

// TestOptionsJSON: Options round-trip through JSON (the emulator hands
// them to a demo's configuration).
func TestOptionsJSON(t *testing.T) {
	ca, cert, key := pkiFiles(t)
	o := Options{URL: "https://127.0.0.1:9000", SAEID: "site-a", PeerSAEID: "site-b", KeySize: 128,
		MaxKeysPerRequest: 16, CAFile: ca, CertFile: cert, KeyFile: key, Timeout: quantum.Duration(1500 * time.Millisecond)}
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"timeout":"1.5s"`) {
		t.Errorf("JSON = %s", b)
	}
	got, err := ParseOptions(b)
	if err != nil {
		t.Fatal(err)
	}
	if got != o {
		t.Errorf("round trip: %+v, want %+v", got, o)
	}
}
