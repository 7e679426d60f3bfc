package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
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
		output    string
	}{
		{
			// The seed API has no TLS and no authentication: the compose
			// deployment serves none unless the operator opts in.
			name:      "compose",
			args:      []string{"--compose"},
			advertise: map[string]string{"sender_app-1": "sender-app-1:8443", "receiver_app-3": "receiver-app-3:8443"},
			seed:      map[string]string{"sender_app-1": "", "receiver_app-1": "", "sender_app-2": ""},
			output:    "seed API off",
		},
		{
			// Inside the container it must listen on the container's
			// interface for Docker to publish it; the override publishes
			// it on the host's loopback only (TestComposeSeedOptIn).
			name:      "compose seed opt-in",
			args:      []string{"--compose", "--seed-api"},
			advertise: map[string]string{"sender_app-1": "sender-app-1:8443"},
			seed:      map[string]string{"sender_app-1": "0.0.0.0:8000", "receiver_app-1": "0.0.0.0:8001", "sender_app-2": "", "receiver_app-3": ""},
			output:    "seed API on",
		},
		{
			name:      "loopback",
			args:      nil,
			advertise: map[string]string{"sender_app-2": "127.0.0.1:8444", "receiver_app-3": "127.0.0.1:9445"},
			seed:      map[string]string{"sender_app-1": "127.0.0.1:8000", "receiver_app-1": "127.0.0.1:8001", "receiver_app-2": ""},
			output:    "seed API on",
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
			if !strings.Contains(out.String(), tc.output) {
				t.Errorf("output does not say %q: %s", tc.output, out.String())
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

// composePorts returns each service's published port mappings in a compose
// file of this repository (services at two spaces, `ports: [...]` flow
// sequences at four) and each service's command line.
func composePorts(t *testing.T, file string) (ports, commands map[string][]string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	ports, commands = map[string][]string{}, map[string][]string{}
	service := ""
	list := func(v string) []string {
		v = strings.TrimSpace(v)
		if !strings.HasPrefix(v, "[") || !strings.HasSuffix(v, "]") {
			t.Fatalf("%s: service %s: %q is not a flow sequence", file, service, v)
		}
		var out []string
		for _, f := range strings.Split(strings.Trim(v, "[]"), ",") {
			out = append(out, strings.Trim(strings.TrimSpace(f), `"`))
		}
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "   ") && strings.HasSuffix(line, ":"):
			service = strings.TrimSuffix(strings.TrimSpace(line), ":")
		case strings.HasPrefix(line, "    ports:"):
			ports[service] = append(ports[service], list(strings.TrimPrefix(line, "    ports:"))...)
		case strings.HasPrefix(line, "    command:"):
			commands[service] = list(strings.TrimPrefix(line, "    command:"))
		case strings.Contains(line, "ports:") && !strings.HasPrefix(strings.TrimSpace(line), "#"):
			t.Fatalf("%s: ports outside the form this test reads: %q", file, line)
		}
	}
	return ports, commands
}

// TestComposeSeedOptIn reads the compose files: the deployment publishes no
// seed port and its init service writes no seed listener (the configs of
// TestDemoInitConfigsValidate's "compose" case); the opt-in override turns
// the seed API on and publishes it on the host's 127.0.0.1 only, every
// published port of it.
func TestComposeSeedOptIn(t *testing.T) {
	root := filepath.Join("..", "..")
	tests := []struct {
		file     string
		seedFlag bool
		// wantSeed: host ports the file publishes for the seed API.
		wantSeed map[string]string
	}{
		{file: "deploy/docker-compose.yml"},
		{file: harness.SeedOverride, seedFlag: true,
			wantSeed: map[string]string{"sender-app-1": "127.0.0.1:8000:8000", "receiver-app-1": "127.0.0.1:8001:8001"}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			ports, commands := composePorts(t, filepath.Join(root, tc.file))
			init, ok := commands["init"]
			if !ok {
				t.Fatal("no init service command")
			}
			if got := slices.Contains(init, "--seed-api"); got != tc.seedFlag {
				t.Errorf("init command %v: --seed-api %v, want %v", init, got, tc.seedFlag)
			}
			seen := 0
			for svc, ps := range ports {
				for _, p := range ps {
					parts := strings.Split(p, ":")
					container := parts[len(parts)-1]
					switch {
					case container == "8443":
						if tc.seedFlag {
							t.Errorf("%s: the override publishes the ETSI port again: %s", svc, p)
						}
					case tc.wantSeed[svc] == p:
						seen++
					default:
						t.Errorf("%s: publishes %s: only 8443 (ETSI, mTLS) and, opted in, the seed API on 127.0.0.1", svc, p)
					}
					if tc.seedFlag && !strings.HasPrefix(p, "127.0.0.1:") {
						t.Errorf("%s: seed port %s is not bound to the host's 127.0.0.1", svc, p)
					}
				}
			}
			if seen != len(tc.wantSeed) {
				t.Errorf("seed ports published: %d, want %d (%v)", seen, len(tc.wantSeed), tc.wantSeed)
			}
		})
	}
}
