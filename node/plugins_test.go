package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"qkdkms/plugins/instrument/wasmtest"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/raftstore"
)

// TestPluginInstallAdmissionAndRemove: a module that loops is refused at
// install with the reason and never reaches the site; a good module is
// installed, selected, refused for removal while active, then removed;
// shipped plugins cannot be removed.
func TestPluginInstallAdmissionAndRemove(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two linked sites")
	}
	a, _ := linkedSitesWASM(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := a.leader()
	installed := func() []string {
		l, err := n.pluginList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range l.Plugins {
			if p.Source == "installed" {
				out = append(out, p.Name)
			}
		}
		return out
	}
	isBad := func(err error, want string) {
		t.Helper()
		if !errors.Is(err, raftstore.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Fatalf("want a 400 mentioning %q, got %v", want, err)
		}
		t.Log(err)
	}

	hang := wasmtest.ABIModule("qkd_step")
	err := n.installPlugin(ctx, InstallRequest{Name: "hang", Step: "reconcile", Version: "0.1.0", ABI: 1, WASM: hang})
	isBad(err, "deadline exceeded")
	if got := installed(); len(got) != 0 {
		t.Fatalf("a refused module reached the site: %v", got)
	}

	dir, err := pluginbuild.Dir()
	if err != nil {
		t.Fatal(err)
	}
	verify, err := os.ReadFile(filepath.Join(dir, "verify.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.installPlugin(ctx, InstallRequest{Name: "verify-copy", Step: "verify", Version: "0.1.0", ABI: 1, WASM: verify}); err != nil {
		t.Fatal(err)
	}
	if got := installed(); len(got) != 1 || got[0] != "verify-copy" {
		t.Fatalf("installed: %v", got)
	}
	if err := n.usePlugin(ctx, UseRequest{Step: "verify", Plugin: "verify-copy"}); err != nil {
		t.Fatal(err)
	}
	isBad(n.removePlugin(ctx, PluginRemoveRequest{Plugin: "verify-copy@0.1.0"}), "active")
	isBad(n.removePlugin(ctx, PluginRemoveRequest{Plugin: "cascade"}), "shipped")
	isBad(n.removePlugin(ctx, PluginRemoveRequest{Plugin: "verify-copy@9.9.9"}), "version")
	if err := n.usePlugin(ctx, UseRequest{Step: "verify", Plugin: "verify"}); err != nil {
		t.Fatal(err)
	}
	// The link may still run verify-copy if the peer agreed to it meanwhile
	// (it did not: only this site selected it); removal goes through.
	if err := n.removePlugin(ctx, PluginRemoveRequest{Plugin: "verify-copy@0.1.0"}); err != nil {
		t.Fatal(err)
	}
	if got := installed(); len(got) != 0 {
		t.Fatalf("still installed after remove: %v", got)
	}
	isBad(n.removePlugin(ctx, PluginRemoveRequest{Plugin: "verify-copy"}), "no plugin")
}
