package host_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/reconcile/cascade"
	"qkdkms/plugins/steps/sift"
	"qkdkms/plugins/steps/wire"
)

func openHost(t testing.TB, opts host.Options) *host.Host {
	t.Helper()
	dir, err := pluginbuild.Dir()
	if err != nil {
		t.Fatal(err)
	}
	if opts.CacheDir == "" {
		opts.CacheDir = filepath.Join(os.TempDir(), "qkdkms-wazero-cache")
	}
	h, err := host.Open(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(context.Background()) })
	return h
}

func randVec(r *bits.RNG, n int) bits.Vec {
	v := bits.New(n)
	for i := 0; i < n; i++ {
		v.Set(i, uint8(r.Uint64()&1))
	}
	return v
}

func vecIn(v bits.Vec) []byte { w := wire.Writer{}; w.Vec(v); return w.B }

func noisy(r *bits.RNG, v bits.Vec, q float64) bits.Vec {
	o := v.Clone()
	for i := 0; i < v.N; i++ {
		if float64(r.Uint64()>>11)/(1<<53) < q {
			o.Flip(i)
		}
	}
	return o
}

type stepCase struct {
	kind     steps.Kind
	plugin   string
	params   []byte
	inA, inB []byte
	seedA    []byte
}

func cases() []stepCase {
	r := bits.NewRNG([]byte("cases"), "test")
	n := 3000
	a := randVec(r, n)
	b := noisy(r, a, 0.03)
	basesA, basesB := randVec(r, n), randVec(r, n)
	ints := make([]uint8, n)
	for i := range ints {
		ints[i] = uint8(r.Uint64() % 3)
	}
	sa := sift.Input{Bits: a, Bases: basesA, Intensity: ints}.Encode(steps.Alice)
	sb := sift.Input{Bits: b, Bases: basesB}.Encode(steps.Bob)
	sifted := func(v bits.Vec) []byte {
		return sift.Sifted{K: 3, Z: v, ZInt: make([]uint8, v.N), X: v, XInt: make([]uint8, v.N)}.Encode()
	}
	u32 := func(x uint32) []byte { w := wire.Writer{}; w.U32(x); return w.B }
	return []stepCase{
		{steps.Sift, "sift", []byte{3}, sa, sb, []byte("s")},
		{steps.Estimate, "estimate", nil, sifted(a), sifted(b), []byte("e")},
		{steps.Reconcile, "cascade", cascade.Params(0.03), vecIn(a), vecIn(b), []byte("c")},
		{steps.Reconcile, "cascade-yanetal", cascade.Params(0.03), vecIn(a), vecIn(b), []byte("y")},
		{steps.Verify, "verify", []byte{64}, vecIn(a), vecIn(a), []byte("v")},
		{steps.Verify, "verify", []byte{32}, vecIn(a), vecIn(b), []byte("v")},
		{steps.Amplify, "amplify", u32(1234), vecIn(a), vecIn(a), []byte("a")},
	}
}

type run struct {
	ra, rb steps.Result
	ta, tb host.Transcript
}

func runCase(t *testing.T, r host.Runner, c stepCase) run {
	t.Helper()
	ctx := context.Background()
	ia, err := r.New(ctx, c.kind, steps.Alice, c.params, c.seedA)
	if err != nil {
		t.Fatal(err)
	}
	defer ia.Close(ctx)
	ib, err := r.New(ctx, c.kind, steps.Bob, c.params, []byte("bob"))
	if err != nil {
		t.Fatal(err)
	}
	defer ib.Close(ctx)
	ra, rb, ta, tb, err := host.RunPair(ctx, ia, ib, c.inA, c.inB)
	if err != nil {
		t.Fatal(err)
	}
	return run{ra, rb, ta, tb}
}

// TestNativeAndWASMIdentical: every step gives the same output, metrics and
// messages natively, as shipped WASM (the C builds), as the Go
// guests built to WASM, and as shipped WASM without the load-time
// instrumentation.
func TestNativeAndWASMIdentical(t *testing.T) {
	ctx := context.Background()
	cache := host.Options{CacheDir: filepath.Join(os.TempDir(), "qkdkms-wazero-cache")}
	shipped := openHost(t, host.Options{})
	goDir, err := pluginbuild.GoDir()
	if err != nil {
		t.Fatal(err)
	}
	goHost, err := host.Open(ctx, goDir, cache)
	if err != nil {
		t.Fatal(err)
	}
	defer goHost.Close(ctx)
	dir, err := pluginbuild.Dir()
	if err != nil {
		t.Fatal(err)
	}
	plain, err := host.OpenUninstrumented(ctx, dir, cache)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close(ctx)
	for _, c := range cases() {
		sel := host.Selection{c.kind: c.plugin}
		nr, err := host.Native(sel)
		if err != nil {
			t.Fatal(err)
		}
		for _, other := range []struct {
			name string
			h    *host.Host
		}{{"shipped", shipped}, {"go-guests", goHost}, {"uninstrumented", plain}} {
			t.Run(c.plugin+"/"+other.name, func(t *testing.T) {
				wr, err := other.h.Runner(sel)
				if err != nil {
					t.Fatal(err)
				}
				sameRun(t, runCase(t, nr, c), runCase(t, wr, c))
			})
		}
	}
}

// sameRun fails unless two runs of a case agree on every output, metric
// and message.
func sameRun(t *testing.T, n, w run) {
	t.Helper()
	for _, p := range []struct {
		name string
		x, y steps.Result
		tx   host.Transcript
		ty   host.Transcript
	}{{"alice", n.ra, w.ra, n.ta, w.ta}, {"bob", n.rb, w.rb, n.tb, w.tb}} {
		if !bytes.Equal(p.x.Output, p.y.Output) || p.x.Metrics != p.y.Metrics {
			t.Errorf("%s: outputs differ (metrics %+v vs %+v)", p.name, p.x.Metrics, p.y.Metrics)
		}
		if len(p.tx.Msgs) != len(p.ty.Msgs) {
			t.Fatalf("%s: %d messages vs %d", p.name, len(p.tx.Msgs), len(p.ty.Msgs))
		}
		for i := range p.tx.Msgs {
			if !bytes.Equal(p.tx.Msgs[i], p.ty.Msgs[i]) {
				t.Errorf("%s: message %d differs", p.name, i)
			}
		}
	}
}

func TestIdentity(t *testing.T) {
	h := openHost(t, host.Options{})
	w1, _ := h.Runner(nil)
	w2, _ := h.Runner(host.Selection{steps.Reconcile: "cascade-yanetal"})
	n1, _ := host.Native(nil)
	if w1.Identity() == w2.Identity() || w1.Identity() == n1.Identity() {
		t.Fatalf("identities should differ: %q %q %q", w1.Identity(), w2.Identity(), n1.Identity())
	}
	if _, err := h.Runner(host.Selection{steps.Reconcile: "ldpc"}); !errors.Is(err, host.ErrUnknown) {
		t.Fatalf("unknown plugin: %v", err)
	}
	t.Log(w1.Identity())
}

// buildBad compiles a bad plugin from testdata.
func buildBad(t *testing.T, name string) ([]byte, host.Info) {
	t.Helper()
	root, err := pluginbuild.Root()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), name+".wasm")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, "./plugins/host/testdata/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, o)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return b, host.Info{Name: name, Kind: steps.Reconcile, Version: "0.0.1", ABI: 1, SHA256: hex.EncodeToString(sum[:])}
}

func TestBadPlugins(t *testing.T) {
	ctx := context.Background()
	t.Run("wrong hash", func(t *testing.T) {
		h := openHost(t, host.Options{})
		b, info := buildBad(t, "garbage")
		info.SHA256 = fmt.Sprintf("%064x", 1)
		err := h.Add(ctx, info, b)
		if !errors.Is(err, host.ErrHash) {
			t.Fatalf("want ErrHash, got %v", err)
		}
		t.Log(err)
	})
	t.Run("tampered file in manifest dir", func(t *testing.T) {
		src, err := pluginbuild.Dir()
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		for _, f := range []string{"manifest.json", "sift.wasm", "estimate.wasm", "cascade.wasm", "cascade-yanetal.wasm", "verify.wasm", "amplify.wasm"} {
			b, err := os.ReadFile(filepath.Join(src, f))
			if err != nil {
				t.Fatal(err)
			}
			if f == "verify.wasm" {
				b = append(b, 0) // one byte more: a different module
			}
			os.WriteFile(filepath.Join(dir, f), b, 0o644)
		}
		_, err = host.Open(ctx, dir, host.Options{})
		if !errors.Is(err, host.ErrHash) {
			t.Fatalf("want ErrHash, got %v", err)
		}
		t.Log(err)
	})
	for _, tc := range []struct {
		name string
		opts host.Options
		want error
	}{
		{"loop", host.Options{CallTimeout: 300 * time.Millisecond}, host.ErrTrap},
		{"oom", host.Options{MemoryLimitPages: 4096}, host.ErrTrap},
		{"garbage", host.Options{}, host.ErrResult},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := openHost(t, tc.opts)
			b, info := buildBad(t, tc.name)
			if err := h.Add(ctx, info, b); err != nil {
				t.Fatal(err)
			}
			r, err := h.Runner(host.Selection{steps.Reconcile: tc.name})
			if err != nil {
				t.Fatal(err)
			}
			inst, err := r.New(ctx, steps.Reconcile, steps.Alice, cascade.Params(0.01), []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			defer inst.Close(ctx)
			res, err := inst.Step(ctx, steps.Input{Data: vecIn(bits.New(100))})
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v (result %+v)", tc.want, err, res)
			}
			if res.Output != nil || res.Done {
				t.Fatal("a failed call returned output")
			}
			t.Log(err)
			// the instance is unusable afterwards (loop, oom) or keeps failing
			if _, err := inst.Step(ctx, steps.Input{HasPeer: true}); err == nil {
				t.Fatal("second call succeeded")
			}
		})
	}
}
