package host_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/plugins/instrument/wasmtest"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/steps"
)

func infoFor(name string, kind steps.Kind, wasm []byte) host.Info {
	sum := sha256.Sum256(wasm)
	return host.Info{Name: name, Kind: kind, Version: "0.0.1", ABI: 1, SHA256: hex.EncodeToString(sum[:])}
}

// TestAdmitShipped: every shipped module passes its admission run.
func TestAdmitShipped(t *testing.T) {
	dir, err := pluginbuild.Dir()
	if err != nil {
		t.Fatal(err)
	}
	m, err := host.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Plugins {
		t.Run(e.Name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, e.File))
			if err != nil {
				t.Fatal(err)
			}
			if err := host.Admit(context.Background(), e.Info, b, host.Options{CacheDir: filepath.Join(os.TempDir(), "qkdkms-wazero-cache")}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAdmitRefuses: modules that loop, trap, exhaust memory, return
// malformed output or do another step's job are refused with the reason.
func TestAdmitRefuses(t *testing.T) {
	ctx := context.Background()
	dir, err := pluginbuild.Dir()
	if err != nil {
		t.Fatal(err)
	}
	amplify, err := os.ReadFile(filepath.Join(dir, "amplify.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	oom, _ := buildBad(t, "oom")
	garbage, _ := buildBad(t, "garbage")
	for _, tc := range []struct {
		name string
		wasm []byte
		kind steps.Kind
		opts host.Options
		want string
	}{
		{"loops in every export", wasmtest.ABIModule("qkd_step"), steps.Reconcile, host.Options{CallTimeout: 300 * time.Millisecond}, "deadline exceeded"},
		{"loops while initialising", wasmtest.ABIModule("_initialize"), steps.Verify, host.Options{CallTimeout: 300 * time.Millisecond}, "deadline exceeded"},
		{"recursion", wasmtest.ABIModule("recursion"), steps.Sift, host.Options{CallTimeout: 300 * time.Millisecond}, "deadline exceeded"},
		{"out of memory", oom, steps.Reconcile, host.Options{MemoryLimitPages: 4096}, "smoke run"},
		{"malformed result", garbage, steps.Reconcile, host.Options{}, "malformed"},
		{"never finishes (a result that is never done)", wasmtest.ABIModule(""), steps.Amplify, host.Options{}, "smoke run"},
		{"another step's module", amplify, steps.Reconcile, host.Options{}, "smoke run"},
		{"not wasm", []byte("\x00asm\x01\x00\x00\x00\x01"), steps.Sift, host.Options{}, "malformed module"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := host.Admit(ctx, infoFor("bad", tc.kind, tc.wasm), tc.wasm, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error mentioning %q, got %v", tc.want, err)
			}
			t.Log(err)
		})
	}
	if !errors.Is(host.Admit(ctx, infoFor("bad", steps.Sift, wasmtest.ABIModule("qkd_new")), wasmtest.ABIModule("qkd_new"), host.Options{CallTimeout: 100 * time.Millisecond}), host.ErrRefused) {
		t.Fatal("a looping module is not ErrRefused")
	}
}
