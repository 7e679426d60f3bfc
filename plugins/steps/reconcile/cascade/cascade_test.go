package cascade

import (
	"fmt"
	"math"
	"testing"

	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/wire"
)

// pair returns a random key of n bits and a copy with exactly round(q·n)
// errors at random positions.
func pair(seed string, n int, q float64) (bits.Vec, bits.Vec) {
	r := bits.NewRNG([]byte(seed), "test")
	a := bits.New(n)
	for i := range a.W {
		a.W[i] = r.Uint64()
	}
	if n%64 != 0 {
		a.W[len(a.W)-1] &= (1 << uint(n%64)) - 1
	}
	b := a.Clone()
	e := int(math.Round(q * float64(n)))
	for _, i := range r.Perm(n)[:e] {
		b.Flip(int(i))
	}
	return a, b
}

// runPair drives both parties to completion, passing messages directly.
func runPair(t testing.TB, f steps.Factory, a, b bits.Vec, q float64) (outA, outB bits.Vec, ma, mb steps.Metrics) {
	sa, err := f(steps.Alice, Params(q), []byte("alice-seed"))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := f(steps.Bob, Params(q), []byte("bob-seed"))
	if err != nil {
		t.Fatal(err)
	}
	wa, wb := wire.Writer{}, wire.Writer{}
	wa.Vec(a)
	wb.Vec(b)
	ra, err := sa.Step(steps.Input{Data: wa.B})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := sb.Step(steps.Input{Data: wb.B})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; !(ra.Done && rb.Done); i++ {
		if i > 100000 {
			t.Fatal("no progress")
		}
		switch {
		case ra.HasMsg && !rb.Done:
			m := ra.Msg
			ra.HasMsg = false
			if rb, err = sb.Step(steps.Input{Peer: m, HasPeer: true}); err != nil {
				t.Fatal(err)
			}
		case rb.HasMsg && !ra.Done:
			m := rb.Msg
			rb.HasMsg = false
			if ra, err = sa.Step(steps.Input{Peer: m, HasPeer: true}); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("deadlock: alice %+v bob %+v", ra.Metrics, rb.Metrics)
		}
	}
	dec := func(o []byte) bits.Vec {
		r := wire.Reader{B: o}
		v := r.Vec()
		if err := r.Done(); err != nil {
			t.Fatal(err)
		}
		return v
	}
	return dec(ra.Output), dec(rb.Output), ra.Metrics, rb.Metrics
}

func h2(x float64) float64 { return -x*math.Log2(x) - (1-x)*math.Log2(1-x) }

func TestCascadeCorrects(t *testing.T) {
	for _, v := range []struct {
		name string
		f    steps.Factory
	}{{"option8", New}, {"yanetal", NewYanetal}} {
		for _, tc := range []struct {
			n int
			q float64
		}{{1, 0}, {10, 0.1}, {1000, 0.01}, {10000, 0.02}, {20000, 0.05}, {30000, 0.08}, {5000, 0}} {
			for s := 0; s < 3; s++ {
				t.Run(fmt.Sprintf("%s/n=%d/q=%v/%d", v.name, tc.n, tc.q, s), func(t *testing.T) {
					a, b := pair(fmt.Sprint(s, tc), tc.n, tc.q)
					errs := a.Diff(b)
					oa, ob, ma, mb := runPair(t, v.f, a, b, tc.q)
					if !oa.Equal(a) {
						t.Fatal("Alice's key changed")
					}
					if d := oa.Diff(ob); d != 0 {
						t.Fatalf("%d bits still differ (of %d errors)", d, errs)
					}
					if ma.Leaked != mb.Leaked || ma.Rounds != mb.Rounds {
						t.Fatalf("metrics disagree: alice %+v bob %+v", ma, mb)
					}
					if mb.Corrected != uint64(errs) {
						t.Fatalf("corrected %d, want %d", mb.Corrected, errs)
					}
					f := 0.0
					if errs > 0 {
						f = float64(ma.Leaked) / (float64(tc.n) * h2(float64(errs)/float64(tc.n)))
					}
					t.Logf("errors %d leaked %d rounds %d f=%.3f", errs, ma.Leaked, ma.Rounds, f)
				})
			}
		}
	}
}

// TestInconsistentParitiesEnd: when Alice's answers are wrong (a faulty or
// hostile peer: every answered parity inverted), Bob's searches must end —
// in an error or an output that verification will reject — instead of
// correcting for ever.
func TestInconsistentParitiesEnd(t *testing.T) {
	for _, v := range []Variant{Option8, Yanetal} {
		t.Run(v.Name, func(t *testing.T) {
			a, b := pair("liar", 20000, 0.03)
			f := func(role steps.Role, params, seed []byte) (steps.Step, error) {
				return NewVariant(v, role, params, seed)
			}
			sa, _ := f(steps.Alice, Params(0.03), []byte("s"))
			sb, _ := f(steps.Bob, Params(0.03), []byte("s"))
			wa, wb := wire.Writer{}, wire.Writer{}
			wa.Vec(a)
			wb.Vec(b)
			ra, _ := sa.Step(steps.Input{Data: wa.B})
			rb, _ := sb.Step(steps.Input{Data: wb.B})
			var err error
			for round := 0; err == nil && !(ra.Done && rb.Done); round++ {
				switch {
				case ra.HasMsg && !rb.Done:
					m := append([]byte(nil), ra.Msg...)
					ra.HasMsg = false
					if round > 0 && len(m) > 4 { // an answer batch: invert every parity
						for i := 4; i < len(m); i++ {
							m[i] = ^m[i]
						}
						if n := int(m[0]) | int(m[1])<<8 | int(m[2])<<16 | int(m[3])<<24; n%8 != 0 {
							m[len(m)-1] &= 1<<(n%8) - 1
						}
					}
					rb, err = sb.Step(steps.Input{Peer: m, HasPeer: true})
				case rb.HasMsg && !ra.Done:
					m := rb.Msg
					rb.HasMsg = false
					ra, err = sa.Step(steps.Input{Peer: m, HasPeer: true})
				default:
					t.Fatal("deadlock")
				}
			}
			t.Logf("ended: %v (bob corrected %d)", err, rb.Corrected)
		})
	}
}
