package host_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"qkdkms/plugins/host"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/steps"
)

// cModule is one C build to load: the committed plugins/c/wasm/NAME.wasm
// unless path is set.
type cModule struct {
	kind          steps.Kind
	name, version string
	path          string
}

// cHost loads C builds into a fresh host, closed when the test ends. A
// runner needs a plugin of every kind: the kinds no module covers get
// placeholders (the first module under other names), never run.
func cHost(t testing.TB, mods ...cModule) *host.Host {
	t.Helper()
	root, err := pluginbuild.Root()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	h, err := host.New(ctx, host.Options{CacheDir: filepath.Join(os.TempDir(), "qkdkms-wazero-cache"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(context.Background()) })
	covered := map[steps.Kind]bool{}
	var first []byte
	var firstSum string
	for _, m := range mods {
		path := m.path
		if path == "" {
			path = filepath.Join(root, "plugins", "c", "wasm", m.name+".wasm")
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		sum := hex.EncodeToString(s[:])
		if first == nil {
			first, firstSum = b, sum
		}
		if err := h.Add(ctx, host.Info{Name: m.name, Kind: m.kind, Version: m.version, ABI: 1, SHA256: sum}, b); err != nil {
			t.Fatal(err)
		}
		covered[m.kind] = true
	}
	for _, k := range steps.Kinds {
		if !covered[k] {
			if err := h.Add(ctx, host.Info{Name: "placeholder-" + string(k), Kind: k, Version: "0", ABI: 1, SHA256: firstSum}, first); err != nil {
				t.Fatal(err)
			}
		}
	}
	return h
}

// cAndNative returns sel's runner on h and its native runner.
func cAndNative(t testing.TB, h *host.Host, sel host.Selection) [2]host.Runner {
	t.Helper()
	cr, err := h.Runner(sel)
	if err != nil {
		t.Fatal(err)
	}
	nr, err := host.Native(sel)
	if err != nil {
		t.Fatal(err)
	}
	return [2]host.Runner{cr, nr}
}
