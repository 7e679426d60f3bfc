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

// simPipe is the sim link of seed and the two ends of a quantum.Pipe,
// closed when the test ends.
func simPipe(t testing.TB, m sim.Model, seed uint64) (*sim.Sim, *quantum.PipeEnd, *quantum.PipeEnd) {
	t.Helper()
	s, err := sim.New(m, seed)
	if err != nil {
		t.Fatal(err)
	}
	ca, cb := quantum.Pipe()
	t.Cleanup(func() {
		ca.Close()
		cb.Close()
		s.Close()
	})
	return s, ca, cb
}

// seeded is a party's deterministic randomness: the same words give the
// same stream.
func seeded(words ...any) *rand.ChaCha8 {
	var k [32]byte
	copy(k[:], fmt.Sprint(words...))
	return rand.NewChaCha8(k)
}

// run runs both halves over a quantum.Pipe and the sim link.
func run(t testing.TB, m sim.Model, seed uint64, pulses uint64, ra, rb host.Runner) outcome {
	t.Helper()
	s, ca, cb := simPipe(t, m, seed)
	cfgA := session.Config{Runner: ra, Pulses: pulses, IntensityProbs: m.IntensityProbs, Rand: seeded(seed, uint64(1))}
	cfgB := session.Config{Runner: rb, Rand: seeded(seed, uint64(2))}
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

// pipeline runs frames 1..frames through the schedule the live link uses:
// the front half of frame f+1 beside the back half of frame f, both on one
// channel through a Mux, then a message of each side's own (After). A
// frame whose front half failed at either side is discarded at both. It
// returns each frame's outcome.
func pipeline(t *testing.T, m sim.Model, seed uint64, frames int, ra, rb func(frame int) host.Runner) []outcome {
	t.Helper()
	s, ca, cb := simPipe(t, m, seed)
	out := make([]outcome, frames+2)
	var cur [2]*session.Ahead // Alice's, Bob's
	for f := 1; f <= frames+1; f++ {
		var next [2]*session.Ahead
		var end [2][]byte
		var endErr [2]error
		var wg sync.WaitGroup
		for i, alice := range []bool{true, false} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ch, runner, res, errp, ferr := cb, rb, &out[f-1].b, &out[f-1].errB, &out[f].errB
				if alice {
					ch, runner, res, errp, ferr = ca, ra, &out[f-1].a, &out[f-1].errA, &out[f].errA
				}
				var id [16]byte
				if cur[i] != nil {
					id = cur[i].ID()
				}
				mux := session.NewMux(ch, id)
				var back sync.WaitGroup
				if cur[i] != nil {
					back.Add(1)
					go func() {
						defer back.Done()
						*res, *errp = cur[i].Finish(context.Background(), runner(f-1), mux.Finishing())
					}()
				}
				if f <= frames {
					cfg := session.Config{Runner: runner(f), Rand: seeded(seed, f, alice)}
					if alice {
						cfg.Pulses, cfg.IntensityProbs = 20_000_000, m.IntensityProbs
						next[i], _, *ferr = session.AliceAhead(context.Background(), cfg, s.Tx, mux.Next(), uint64(f))
					} else {
						next[i], _, *ferr = session.BobAhead(context.Background(), cfg, s.Rx, mux.Next())
					}
				}
				back.Wait()
				if err := mux.After().Send(context.Background(), []byte(fmt.Sprintf("{end %d %v}", f, alice))); err != nil {
					t.Error(err)
				}
				end[i], endErr[i] = mux.After().Recv(context.Background())
			}()
		}
		wg.Wait()
		for i, alice := range []bool{false, true} { // each reads the other's message
			if want := fmt.Sprintf("{end %d %v}", f, alice); endErr[i] != nil || string(end[i]) != want {
				t.Fatalf("frame %d: after the sessions read %q (%v), want %q", f, end[i], endErr[i], want)
			}
		}
		if next[0] == nil || next[1] == nil {
			for _, a := range next {
				if a != nil {
					a.Discard()
				}
			}
			next = [2]*session.Ahead{}
		} else if next[0].ID() != next[1].ID() {
			t.Fatalf("frame %d: the parties' front halves have different IDs", f)
		}
		cur = next
	}
	return out[1 : frames+1]
}

// TestPipelinedSessions: frames run pipelined through a Mux give both
// parties the same key per frame, the same keys as the frames run one
// after another with the same seeds.
func TestPipelinedSessions(t *testing.T) {
	r := native(t, nil)
	m := sim.DefaultModel()
	m.FiberKm = 25
	same := func(int) host.Runner { return r }
	got := pipeline(t, m, 11, 4, same, same)
	s, _, _ := simPipe(t, m, 11) // the frames again, one at a time
	for f, o := range got {
		checkAgree(t, o)
		ca, cb := quantum.Pipe()
		var want outcome
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			want.b, want.errB = session.Bob(context.Background(), session.Config{Runner: r, Rand: seeded(uint64(11), f+1, false)}, s.Rx, cb)
		}()
		want.a, want.errA = session.Alice(context.Background(), session.Config{Runner: r, Pulses: 20_000_000,
			IntensityProbs: m.IntensityProbs, Rand: seeded(uint64(11), f+1, true)}, s.Tx, ca, uint64(f+1))
		wg.Wait()
		ca.Close()
		cb.Close()
		checkAgree(t, want)
		if !bytes.Equal(o.a.Key, want.a.Key) || o.a.BlockID != want.a.BlockID {
			t.Fatalf("frame %d: pipelined key differs from the key of the frame run alone", f+1)
		}
		t.Logf("frame %d: %d bits, block %x", f+1, o.a.FinalBits, o.a.BlockID[:4])
	}
}

// TestPipelinedFrontFails: when the front half of the next frame fails (a
// plugin error in its estimate at Bob), the frame being finished beside
// it still gives both parties its key, the failed frame gives none, and
// the frame after it runs normally.
func TestPipelinedFrontFails(t *testing.T) {
	r := native(t, nil)
	broken := &faulty{Runner: r, kind: steps.Estimate}
	m := sim.DefaultModel()
	got := pipeline(t, m, 12, 3, func(int) host.Runner { return r }, func(f int) host.Runner {
		if f == 2 {
			return broken
		}
		return r
	})
	checkAgree(t, got[0])
	checkAgree(t, got[2])
	if !errors.Is(got[1].errB, host.ErrPlugin) || !errors.Is(got[1].errA, session.ErrAbort) {
		t.Fatalf("frame 2: alice %v, bob %v", got[1].errA, got[1].errB)
	}
	if got[1].a.Key != nil || got[1].b.Key != nil {
		t.Fatal("key from the failed frame")
	}
}
