package session_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"qkdkms/plugins/host"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/steps"
	"qkdkms/quantum"
	"qkdkms/quantum/session"
	"qkdkms/quantum/sim"
)

type outcome struct {
	a, b       session.Result
	errA, errB error
}

// run runs both halves over a quantum.Pipe and the sim link.
func run(t testing.TB, m sim.Model, seed uint64, pulses uint64, ra, rb host.Runner) outcome {
	t.Helper()
	s, err := sim.New(m, seed)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ca, cb := quantum.Pipe()
	defer ca.Close()
	defer cb.Close()
	rnd := func(x uint64) *rand.ChaCha8 {
		var k [32]byte
		copy(k[:], fmt.Sprint(seed, x))
		return rand.NewChaCha8(k)
	}
	cfgA := session.Config{Runner: ra, Pulses: pulses, IntensityProbs: m.IntensityProbs, Rand: rnd(1)}
	cfgB := session.Config{Runner: rb, Rand: rnd(2)}
	var o outcome
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		o.b, o.errB = session.Bob(context.Background(), cfgB, s.Rx, cb)
	}()
	o.a, o.errA = session.Alice(context.Background(), cfgA, s.Tx, ca, seed)
	wg.Wait()
	return o
}

func native(t testing.TB, sel host.Selection) host.Runner {
	r, err := host.Native(sel)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func wasmHost(t testing.TB) *host.Host {
	dir, err := pluginbuild.Dir()
	if err != nil {
		t.Fatal(err)
	}
	h, err := host.Open(context.Background(), dir, host.Options{CacheDir: filepath.Join(os.TempDir(), "qkdkms-wazero-cache")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(context.Background()) })
	return h
}

func checkAgree(t *testing.T, o outcome) {
	t.Helper()
	if o.errA != nil || o.errB != nil {
		t.Fatalf("session failed: alice %v, bob %v", o.errA, o.errB)
	}
	if o.a.FinalBits == 0 || o.a.FinalBits%8 != 0 || len(o.a.Key) != o.a.FinalBits/8 {
		t.Fatalf("bad final key: %d bits, %d bytes", o.a.FinalBits, len(o.a.Key))
	}
	if !bytes.Equal(o.a.Key, o.b.Key) || o.a.BlockID != o.b.BlockID {
		t.Fatal("Alice's and Bob's keys or block IDs differ")
	}
	if o.a.LeakEC != o.b.LeakEC || o.a.FinalBits != o.b.FinalBits {
		t.Fatalf("accounting differs: leak %d/%d, final %d/%d", o.a.LeakEC, o.b.LeakEC, o.a.FinalBits, o.b.FinalBits)
	}
}

func TestSessionKeysAgree(t *testing.T) {
	r := native(t, nil)
	for _, km := range []float64{0, 25} {
		for seed := uint64(1); seed <= 3; seed++ {
			t.Run(fmt.Sprintf("%gkm/seed%d", km, seed), func(t *testing.T) {
				m := sim.DefaultModel()
				m.FiberKm = km
				o := run(t, m, seed, 20_000_000, r, r)
				checkAgree(t, o)
				a := o.a
				t.Logf("pulses %d det %d n_Z %d n_X %d QBER_X %.4f QBER_Z %.4f λ_EC %d f %.3f final %d",
					a.Pulses, a.Detections, a.SiftedBits, a.TestBits, a.QBERX, a.QBERZ, a.LeakEC, a.ReconEfficiency(), a.FinalBits)
			})
		}
	}
}

func TestSessionWASM(t *testing.T) {
	h := wasmHost(t)
	r, err := h.Runner(nil)
	if err != nil {
		t.Fatal(err)
	}
	m := sim.DefaultModel()
	o := run(t, m, 7, 20_000_000, r, r)
	checkAgree(t, o)
	// the same session natively gives the same key (same seeds everywhere)
	n := run(t, m, 7, 20_000_000, native(t, nil), native(t, nil))
	checkAgree(t, n)
	if !bytes.Equal(o.a.Key, n.a.Key) {
		t.Fatal("WASM and native sessions produced different keys")
	}
	for _, s := range o.a.Steps {
		t.Logf("%-9s %-22s leaked %6d disclosed %6d rounds %4d wall %v", s.Kind, s.Plugin, s.Leaked, s.Disclosed, s.Rounds, s.Wall)
	}
}

func TestSessionEveAborts(t *testing.T) {
	m := sim.DefaultModel()
	m.Eve = 1
	r := native(t, nil)
	o := run(t, m, 3, 20_000_000, r, r)
	for _, x := range []struct {
		res session.Result
		err error
	}{{o.a, o.errA}, {o.b, o.errB}} {
		if !errors.Is(x.err, session.ErrAbort) || x.res.Key != nil || x.res.FinalBits != 0 {
			t.Fatalf("want abort with no key, got %v, %d bits", x.err, x.res.FinalBits)
		}
	}
	if o.a.QBERX < 0.2 {
		t.Fatalf("QBER_X %.3f under full intercept-resend", o.a.QBERX)
	}
	t.Logf("alice: %v (QBER_X %.3f)", o.errA, o.a.QBERX)
}

func TestSessionPluginMismatch(t *testing.T) {
	m := sim.DefaultModel()
	o := run(t, m, 4, 1_000_000, native(t, nil), native(t, host.Selection{steps.Reconcile: "cascade-yanetal"}))
	if !errors.Is(o.errB, session.ErrMismatch) || !errors.Is(o.errA, session.ErrPeer) {
		t.Fatalf("want mismatch: alice %v, bob %v", o.errA, o.errB)
	}
	if o.a.Key != nil || o.b.Key != nil {
		t.Fatal("key despite mismatch")
	}
	t.Log(o.errB)
}

// faulty wraps a runner and breaks one step of one party.
type faulty struct {
	host.Runner
	kind    steps.Kind
	corrupt bool // flip the first output bit instead of failing
}

type faultyInst struct {
	host.Instance
	f *faulty
}

func (f *faulty) New(ctx context.Context, k steps.Kind, role steps.Role, params, seed []byte) (host.Instance, error) {
	i, err := f.Runner.New(ctx, k, role, params, seed)
	if err != nil || k != f.kind {
		return i, err
	}
	return &faultyInst{i, f}, nil
}

func (fi *faultyInst) Step(ctx context.Context, in steps.Input) (steps.Result, error) {
	r, err := fi.Instance.Step(ctx, in)
	if err != nil {
		return r, err
	}
	if !fi.f.corrupt {
		return steps.Result{}, fmt.Errorf("%w: injected failure", host.ErrPlugin)
	}
	if r.Done && len(r.Output) > 4 {
		r.Output = append([]byte(nil), r.Output...)
		r.Output[4] ^= 1 // first key bit after the u32 length
	}
	return r, nil
}

func TestSessionFailuresGiveNoKey(t *testing.T) {
	m := sim.DefaultModel()
	for _, tc := range []struct {
		name string
		bob  host.Runner
		want error
	}{
		{"plugin error", &faulty{Runner: native(t, nil), kind: steps.Reconcile}, host.ErrPlugin},
		{"verification", &faulty{Runner: native(t, nil), kind: steps.Reconcile, corrupt: true}, session.ErrVerify},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := run(t, m, 5, 20_000_000, native(t, nil), tc.bob)
			if !errors.Is(o.errB, tc.want) || !errors.Is(o.errA, session.ErrAbort) {
				t.Fatalf("alice %v, bob %v", o.errA, o.errB)
			}
			if o.a.Key != nil || o.b.Key != nil {
				t.Fatal("key after failure")
			}
			t.Logf("alice: %v; bob: %v", o.errA, o.errB)
		})
	}
}
