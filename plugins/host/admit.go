package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/estimate"
	"qkdkms/plugins/steps/sift"
	"qkdkms/plugins/steps/wire"
)

// ErrRefused: a module failed its admission run.
var ErrRefused = errors.New("plugin host: module refused at admission")

// AdmitTimeout is the default deadline of each call during admission.
const AdmitTimeout = 2 * time.Second

// Admit decides whether a module may be installed into a site. It loads the
// module on a scratch host (sha256, ABI, exports, instrumentation; see Add),
// then runs its step's canonical smoke input (smoke below): an Alice and a
// Bob instance of the module against each other, every call under
// opts.CallTimeout (default AdmitTimeout) and opts.MemoryLimitPages. A
// module that loops, traps, runs out of memory, reports an error or returns
// output that is malformed or wrong for the step is refused with ErrRefused
// and the reason.
func Admit(ctx context.Context, info Info, wasm []byte, opts Options) error {
	if opts.CallTimeout == 0 {
		opts.CallTimeout = AdmitTimeout
	}
	h, err := New(ctx, opts)
	if err != nil {
		return err
	}
	defer h.Close(ctx)
	if err := h.Add(ctx, info, wasm); err != nil {
		return err
	}
	sm, err := smoke(info.Kind)
	if err != nil {
		return err
	}
	r := &wasmRunner{h: h, sel: map[steps.Kind]Info{info.Kind: info}, mods: map[steps.Kind]*module{info.Kind: h.mods[info.Name]}}
	ra, rb, err := runSmoke(ctx, r, info.Kind, sm)
	if err != nil {
		return fmt.Errorf("%w: %s: smoke run: %w", ErrRefused, info.Name, err)
	}
	if err := sm.check(ra, rb); err != nil {
		return fmt.Errorf("%w: %s: smoke run: %w", ErrRefused, info.Name, err)
	}
	return nil
}

func runSmoke(ctx context.Context, r Runner, kind steps.Kind, sm smokeCase) (ra, rb steps.Result, err error) {
	a, err := r.New(ctx, kind, steps.Alice, sm.params, []byte("qkdkms admission seed"))
	if err != nil {
		return ra, rb, err
	}
	defer a.Close(ctx)
	b, err := r.New(ctx, kind, steps.Bob, sm.params, []byte("qkdkms admission seed"))
	if err != nil {
		return ra, rb, err
	}
	defer b.Close(ctx)
	ra, rb, _, _, err = RunPair(ctx, a, b, sm.inA, sm.inB)
	return ra, rb, err
}

// smokeCase is a step's canonical input and what its output must satisfy.
type smokeCase struct {
	params, inA, inB []byte
	check            func(ra, rb steps.Result) error
}

// smoke builds the canonical smoke input of a step: a few thousand bits
// with 2 % errors between the parties, from a fixed seed. The sift and
// estimate inputs come from the shipped step code run natively.
func smoke(kind steps.Kind) (smokeCase, error) {
	const n = 4096
	rng := bits.NewRNG([]byte("qkdkms admission"), "smoke")
	random := func(n int) bits.Vec {
		v := bits.New(n)
		for i := range v.W {
			v.W[i] = rng.Uint64()
		}
		if n%64 != 0 {
			v.W[len(v.W)-1] &= 1<<(n%64) - 1
		}
		return v
	}
	noisy := func(v bits.Vec) bits.Vec {
		o := v.Clone()
		for _, i := range rng.Perm(v.N)[:v.N/50] {
			o.Flip(int(i))
		}
		return o
	}
	vec := func(v bits.Vec) []byte { w := wire.Writer{}; w.Vec(v); return w.B }
	key := random(n)
	// sift's input: Bob measured in random bases; where they match
	// Alice's he got her bit up to 2 % errors.
	siftCase := func() smokeCase {
		alice := sift.Input{Bits: random(2 * n), Bases: random(2 * n), Intensity: make([]uint8, 2*n)}
		for i := range alice.Intensity {
			alice.Intensity[i] = uint8(rng.Uint64() % 3)
		}
		bob := sift.Input{Bits: noisy(alice.Bits), Bases: random(2 * n)}
		return smokeCase{params: []byte{3}, inA: alice.Encode(steps.Alice), inB: bob.Encode(steps.Bob)}
	}
	switch kind {
	case steps.Sift:
		sc := siftCase()
		sc.check = func(ra, rb steps.Result) error {
			a, err := sift.DecodeSifted(ra.Output)
			if err != nil {
				return fmt.Errorf("alice's output: %w", err)
			}
			b, err := sift.DecodeSifted(rb.Output)
			if err != nil {
				return fmt.Errorf("bob's output: %w", err)
			}
			if a.Z.N != b.Z.N || a.X.N != b.X.N || a.Z.N+a.X.N == 0 {
				return fmt.Errorf("the parties kept different detections (Z %d/%d, X %d/%d)", a.Z.N, b.Z.N, a.X.N, b.X.N)
			}
			return nil
		}
		return sc, nil
	case steps.Estimate:
		nat, err := Native(nil)
		if err != nil {
			return smokeCase{}, err
		}
		ra, rb, err := runSmoke(context.Background(), nat, steps.Sift, siftCase())
		if err != nil {
			return smokeCase{}, err
		}
		return smokeCase{inA: ra.Output, inB: rb.Output, check: func(ra, rb steps.Result) error {
			oa, err := estimate.DecodeOutput(ra.Output)
			if err != nil {
				return fmt.Errorf("alice's output: %w", err)
			}
			ob, err := estimate.DecodeOutput(rb.Output)
			if err != nil {
				return fmt.Errorf("bob's output: %w", err)
			}
			if oa.Key.N != ob.Key.N || oa.Key.N == 0 {
				return fmt.Errorf("key lengths differ or are zero (%d, %d)", oa.Key.N, ob.Key.N)
			}
			return nil
		}}, nil
	case steps.Reconcile:
		w := wire.Writer{}
		w.F64(0.02)
		return smokeCase{params: w.B, inA: vec(key), inB: vec(noisy(key)), check: func(ra, rb steps.Result) error {
			a, err := outVec(ra.Output, n)
			if err != nil {
				return fmt.Errorf("alice's output: %w", err)
			}
			b, err := outVec(rb.Output, n)
			if err != nil {
				return fmt.Errorf("bob's output: %w", err)
			}
			if !a.Equal(key) {
				return errors.New("alice's key changed")
			}
			if !b.Equal(key) {
				return fmt.Errorf("bob's key still differs in %d bits", b.Diff(key))
			}
			return nil
		}}, nil
	case steps.Verify:
		return smokeCase{params: []byte{32}, inA: vec(key), inB: vec(key), check: func(ra, rb steps.Result) error {
			if !bytes.Equal(ra.Output, []byte{1}) || !bytes.Equal(rb.Output, []byte{1}) {
				return fmt.Errorf("equal keys: verdicts %x and %x, want 01 and 01", ra.Output, rb.Output)
			}
			return nil
		}}, nil
	case steps.Amplify:
		const l = n / 2
		w := wire.Writer{}
		w.U32(l)
		return smokeCase{params: w.B, inA: vec(key), inB: vec(key), check: func(ra, rb steps.Result) error {
			a, err := outVec(ra.Output, l)
			if err != nil {
				return fmt.Errorf("alice's output: %w", err)
			}
			b, err := outVec(rb.Output, l)
			if err != nil {
				return fmt.Errorf("bob's output: %w", err)
			}
			if !a.Equal(b) {
				return errors.New("the parties' final keys differ")
			}
			return nil
		}}, nil
	}
	return smokeCase{}, fmt.Errorf("%w: no smoke input for step %q", ErrUnknown, kind)
}

// outVec decodes an output that must be a wire vec of n bits.
func outVec(b []byte, n int) (bits.Vec, error) {
	r := wire.Reader{B: b}
	v := r.Vec()
	if err := r.Done(); err != nil {
		return bits.Vec{}, err
	}
	if v.N != n {
		return bits.Vec{}, fmt.Errorf("%d bits, want %d", v.N, n)
	}
	return v, nil
}
