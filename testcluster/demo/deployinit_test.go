package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"qkdkms/node"

	"qkdkms/testcluster/harness"
)

// TestDemoInitConfigsValidate writes the compose and loopback layouts and
// checks every config with the node's own strict parser and validator.
func TestDemoInitConfigsValidate(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		advertise map[string]string
		seed      map[string]string
	}{
		{
			name:      "compose",
			args:      []string{"--compose"},
			advertise: map[string]string{"sender_app-1": "sender-app-1:8443", "receiver_app-3": "receiver-app-3:8443"},
			seed:      map[string]string{"sender_app-1": "0.0.0.0:8000", "receiver_app-1": "0.0.0.0:8001", "sender_app-2": ""},
		},
		{
			name:      "loopback",
			args:      nil,
			advertise: map[string]string{"sender_app-2": "127.0.0.1:8444", "receiver_app-3": "127.0.0.1:9445"},
			seed:      map[string]string{"sender_app-1": "127.0.0.1:8000", "receiver_app-1": "127.0.0.1:8001", "receiver_app-2": ""},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var out, errb bytes.Buffer
			if code := DemoInit(context.Background(), append([]string{"--out", dir}, tc.args...), &out, &errb); code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			t.Log(out.String())
			for _, site := range []string{"sender_app", "receiver_app"} {
				for i := 1; i <= 3; i++ {
					id := harness.NodeID(site, i)
					c, err := node.LoadConfig(filepath.Join(dir, "config", id+".json"))
					if err != nil {
						t.Fatal(err)
					}
					if err := c.WithDefaults().Validate(); err != nil {
						t.Fatalf("%s: %v", id, err)
					}
					if c.KMEID != site || c.NodeID != id || len(c.Bootstrap) != 3 || len(c.Peers) != 1 || len(c.Peers[otherSite(site)]) != 3 {
						t.Fatalf("%s: wrong identity or membership: %+v", id, c)
					}
					if want, ok := tc.advertise[id]; ok && c.Advertise != want {
						t.Errorf("%s: advertise %s, want %s", id, c.Advertise, want)
					}
					if want, ok := tc.seed[id]; ok && c.SeedListen != want {
						t.Errorf("%s: seed_listen %q, want %q", id, c.SeedListen, want)
					}
					for _, f := range []string{c.TLS.CA, c.TLS.Cert, c.TLS.Key, c.KEKFile} {
						if _, err := os.Stat(f); err != nil {
							t.Errorf("%s: %v", id, err)
						}
					}
					if fi, _ := os.Stat(c.KEKFile); fi != nil && fi.Mode().Perm() != 0o600 {
						t.Errorf("KEK mode %v", fi.Mode().Perm())
					}
				}
			}
			// A second run keeps the CA and the KEKs.
			ca1, _ := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
			kek1, _ := os.ReadFile(filepath.Join(dir, "kek", "sender_app.kek"))
			if code := DemoInit(context.Background(), append([]string{"--out", dir}, tc.args...), &out, &errb); code != 0 {
				t.Fatalf("second run: exit %d: %s", code, errb.String())
			}
			ca2, _ := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
			kek2, _ := os.ReadFile(filepath.Join(dir, "kek", "sender_app.kek"))
			if !bytes.Equal(ca1, ca2) || !bytes.Equal(kek1, kek2) || len(kek1) == 0 {
				t.Fatal("second run replaced the CA or the KEK")
			}
			if !strings.Contains(out.String(), "seed API on") {
				t.Errorf("output does not name the seed API: %s", out.String())
			}
		})
	}
}

func otherSite(s string) string {
	if s == harness.DefaultSender {
		return harness.DefaultReceiver
	}
	return harness.DefaultSender
}
