package host_test

// The C builds of Cascade (plugins/c/cascade, plugins/c/wasm/cascade.wasm
// and cascade-yanetal.wasm) against the Go reference run natively: both
// parties driven message by message, every result compared at every call.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"

	"qkdkms/plugins/host"
	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/reconcile/cascade"
	"qkdkms/plugins/steps/wire"
)

var cascadePlugins = []string{"cascade", "cascade-yanetal"}

// cRunners loads the committed C builds into a fresh host and returns, per
// plugin name, the C runner and the native Go runner.
func cRunners(t testing.TB) map[string][2]host.Runner {
	t.Helper()
	var mods []cModule
	for _, name := range cascadePlugins {
		mods = append(mods, cModule{kind: steps.Reconcile, name: name, version: cascade.Version})
	}
	h := cHost(t, mods...)
	out := map[string][2]host.Runner{}
	for _, name := range cascadePlugins {
		out[name] = cAndNative(t, h, host.Selection{steps.Reconcile: name})
	}
	return out
}

// twin is one party run twice, by the C build and natively.
type twin struct {
	t    testing.TB
	name string
	c, n host.Instance
	call int
}

func newTwin(t testing.TB, rs [2]host.Runner, name string, role steps.Role, params, seed []byte) (*twin, error) {
	t.Helper()
	ctx := context.Background()
	ci, cerr := rs[0].New(ctx, steps.Reconcile, role, params, seed)
	ni, nerr := rs[1].New(ctx, steps.Reconcile, role, params, seed)
	if (cerr == nil) != (nerr == nil) {
		t.Fatalf("%s %v: new: C error %v, Go error %v", name, role, cerr, nerr)
	}
	if cerr != nil {
		return nil, nerr
	}
	tw := &twin{t: t, name: fmt.Sprintf("%s/%v", name, role), c: ci, n: ni}
	t.Cleanup(func() { ci.Close(ctx); ni.Close(ctx) })
	return tw, nil
}

// step calls both instances and fails unless they agree on everything: the
// error (both or neither), output, message, flags and metrics.
func (tw *twin) step(in steps.Input) (steps.Result, error) {
	tw.t.Helper()
	ctx := context.Background()
	tw.call++
	cr, cerr := tw.c.Step(ctx, in)
	nr, nerr := tw.n.Step(ctx, in)
	if (cerr == nil) != (nerr == nil) {
		tw.t.Fatalf("%s call %d: C error %v, Go error %v", tw.name, tw.call, cerr, nerr)
	}
	if nerr != nil {
		return steps.Result{}, nerr
	}
	if cr.Done != nr.Done || cr.HasMsg != nr.HasMsg || cr.Metrics != nr.Metrics ||
		!bytes.Equal(cr.Output, nr.Output) || !bytes.Equal(cr.Msg, nr.Msg) {
		tw.t.Fatalf("%s call %d: C and Go differ:\nC  done=%v msg=%v %+v output %d bytes, message %d bytes %x\nGo done=%v msg=%v %+v output %d bytes, message %d bytes %x",
			tw.name, tw.call, cr.Done, cr.HasMsg, cr.Metrics, len(cr.Output), len(cr.Msg), head(cr.Msg),
			nr.Done, nr.HasMsg, nr.Metrics, len(nr.Output), len(nr.Msg), head(nr.Msg))
	}
	return nr, nil
}

func head(b []byte) []byte { return b[:min(len(b), 48)] }

// tamper may replace the message a party is about to receive (k counts the
// messages delivered so far, from 0) and returns it, and whether it changed
// it; nil delivers every message unchanged.
type tamper func(toAlice bool, k int, msg []byte) ([]byte, bool)

// errTampered ends a lockstep run after a changed message was delivered and
// both builds agreed on the result. The run stops there: a changed query
// makes Alice answer another node, and any wrong parity can send Bob's
// binary searches into a cycle of corrections that never ends (the Go
// reference trusts Alice's parities; under WASM the host's call deadline
// ends it).
var errTampered = errors.New("tampered message delivered")

// lockstep runs Alice and Bob as host.RunPair does, each as a twin, and
// returns the final results (err: the first error both builds agreed on).
func lockstep(t testing.TB, rs [2]host.Runner, name string, q float64, seed []byte, a, b bits.Vec, tm tamper) (ra, rb steps.Result, err error) {
	t.Helper()
	params := cascade.Params(q)
	ta, err := newTwin(t, rs, name, steps.Alice, params, seed)
	if err != nil {
		return
	}
	tb, err := newTwin(t, rs, name, steps.Bob, params, []byte("bob"))
	if err != nil {
		return
	}
	if ra, err = ta.step(steps.Input{Data: vecIn(a)}); err != nil {
		return
	}
	if rb, err = tb.step(steps.Input{Data: vecIn(b)}); err != nil {
		return
	}
	for k := 0; !(ra.Done && rb.Done); k++ {
		if k > 1_000_000 {
			t.Fatal("no progress")
		}
		changed := false
		switch {
		case ra.HasMsg && !rb.Done:
			m := ra.Msg
			if tm != nil {
				m, changed = tm(false, k, m)
			}
			ra.HasMsg = false
			if rb, err = tb.step(steps.Input{Peer: m, HasPeer: true}); err != nil {
				return
			}
		case rb.HasMsg && !ra.Done:
			m := rb.Msg
			if tm != nil {
				m, changed = tm(true, k, m)
			}
			rb.HasMsg = false
			if ra, err = ta.step(steps.Input{Peer: m, HasPeer: true}); err != nil {
				return
			}
		default:
			t.Fatalf("both parties wait (alice done=%v, bob done=%v)", ra.Done, rb.Done)
		}
		if changed {
			return ra, rb, errTampered
		}
	}
	return
}

// keyPair returns a random n-bit key and a copy with exactly round(q·n)
// errors.
func keyPair(seed string, n int, q float64) (bits.Vec, bits.Vec) {
	r := bits.NewRNG([]byte(seed), "c-cascade-test")
	a := randVec(r, n)
	b := a.Clone()
	if n > 0 {
		b = exactErrors(r, a, q)
	}
	return a, b
}

// TestCCascadeMatchesGo: key sizes from 0 bits up, error rates 0 to 10 %,
// QBER estimates right and wrong, seeds shorter and longer than the 32
// bytes of the permutation seed (bits.SeedBytes), several per small size.
func TestCCascadeMatchesGo(t *testing.T) {
	rs := cRunners(t)
	sizes := []int{0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 256, 257,
		500, 1000, 1023, 1024, 1025, 2047, 4095, 4096, 4097, 8191, 8192, 8193, 10007, 20000, 33333}
	qs := []float64{0, 0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1}
	seeds := []string{"", "s", "a seed of exactly 32 bytes......", "a seed longer than thirty-two bytes, used as is", "0123456789abcdefghijklmnopqrstu"}
	if testing.Short() {
		sizes = sizes[:len(sizes)-4]
	}
	for _, name := range cascadePlugins {
		for _, n := range sizes {
			for i, q := range qs {
				runs := 1
				if n <= 2047 {
					runs = 3
				}
				for s := 0; s < runs; s++ {
					seed := seeds[(n+i+s)%len(seeds)]
					t.Run(fmt.Sprintf("%s/n=%d/q=%g/%d", name, n, q, s), func(t *testing.T) {
						a, b := keyPair(fmt.Sprint(n, q, s), n, q)
						// the plugin's estimate need not be the true rate
						est := []float64{q, 0.02, 0.3, 0.5}[(n+s)%4]
						ra, _, err := lockstep(t, rs[name], name, est, []byte(seed), a, b, nil)
						if err != nil {
							t.Fatal(err)
						}
						if !bytes.Equal(ra.Output, vecIn(a)) {
							t.Fatal("Alice's key changed")
						}
					})
				}
			}
		}
	}
}

// TestCCascadeLarge: n around 10^5 at several error rates and seeds, and
// the sizes where the permutation tables change form (2^16, 2^17).
func TestCCascadeLarge(t *testing.T) {
	rs := cRunners(t)
	type tc struct {
		n int
		q float64
	}
	var cases []tc
	for _, q := range []float64{0.01, 0.02, 0.05, 0.1} {
		cases = append(cases, tc{100000, q}, tc{100001, q}) // odd n: the n/2 passes permute instead of splitting in halves
	}
	cases = append(cases, tc{65536, 0.03}, tc{65537, 0.03}, tc{131072, 0.02}, tc{131073, 0.02}, tc{150001, 0.04})
	if testing.Short() {
		cases = cases[:3]
	}
	for _, name := range cascadePlugins {
		for s, c := range cases {
			t.Run(fmt.Sprintf("%s/n=%d/q=%g", name, c.n, c.q), func(t *testing.T) {
				a, b := keyPair(fmt.Sprint("large", c, s), c.n, c.q)
				ra, rb, err := lockstep(t, rs[name], name, c.q, []byte(fmt.Sprint(s)), a, b, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("leaked %d rounds %d corrected %d, equal=%v", ra.Leaked, ra.Rounds, rb.Corrected, bytes.Equal(ra.Output, rb.Output))
			})
		}
	}
}

// TestCCascadeBlockSizes sweeps the QBER estimate finely, and exactly at and
// next to every value where a block size changes, comparing Alice's first
// message (permutation seed and every top-level parity, which depend on the
// block sizes) of the C and Go builds.
func TestCCascadeBlockSizes(t *testing.T) {
	rs := cRunners(t)
	n := 1 << 14
	key := randVec(bits.NewRNG([]byte("sweep"), "c-cascade-test"), n)
	in := vecIn(key)
	var qs []float64
	grid := 4000
	if testing.Short() {
		grid = 500
	}
	for i := 0; i <= grid; i++ { // log-spaced over [0.0005, 0.35] (clamping included)
		qs = append(qs, 0.0005*math.Pow(0.35/0.0005, float64(i)/float64(grid)))
	}
	near := func(x float64) { // x and the three floats either side of it
		y := x
		for i := 0; i < 3; i++ {
			y = math.Nextafter(y, 0)
		}
		for i := 0; i < 7; i++ {
			qs = append(qs, y)
			y = math.Nextafter(y, 1)
		}
	}
	// option 8: ⌈log2(1/q) − ½⌉ changes at q = 2^−(m+½), ⌈(log2(1/q) + 11.5)/2⌉
	// at q = 2^−(2m−11.5)
	for m := 0; m <= 12; m++ {
		near(math.Pow(2, -(float64(m) + 0.5)))
		near(math.Pow(2, -(2*float64(m) - 11.5)))
	}
	// Yan et al.: ⌈0.8/q⌉ changes at q = 0.8/m
	for m := 2; m <= 801; m++ {
		near(0.8 / float64(m))
	}
	near(0.001)
	near(0.3)
	for _, name := range cascadePlugins {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			for _, q := range qs {
				if q <= 0 || q > 0.5 {
					continue
				}
				var msgs [2][]byte
				for i, r := range rs[name] {
					inst, err := r.New(ctx, steps.Reconcile, steps.Alice, cascade.Params(q), []byte("sweep-seed"))
					if err != nil {
						t.Fatal(err)
					}
					res, err := inst.Step(ctx, steps.Input{Data: in})
					inst.Close(ctx)
					if err != nil {
						t.Fatal(err)
					}
					msgs[i] = res.Msg
				}
				if !bytes.Equal(msgs[0], msgs[1]) {
					t.Fatalf("q=%v (%#x): first messages differ (%d vs %d bytes)", q, math.Float64bits(q), len(msgs[0]), len(msgs[1]))
				}
			}
			t.Logf("%d estimates", len(qs))
		})
	}
}

func f64(x float64) []byte { w := wire.Writer{}; w.F64(x); return w.B }

// TestCCascadeBadParamsAndInput: parameters (f64 QBER in [0, 0.5], nothing
// else), inputs (a wire vec, bits beyond n ignored) and calls out of order.
func TestCCascadeBadParamsAndInput(t *testing.T) {
	rs := cRunners(t)
	nan := math.Float64frombits(0x7ff8000000000001)
	params := [][]byte{nil, {1}, f64(0.01)[:7], append(f64(0.01), 0), f64(nan), f64(math.NaN()), f64(-0.1), f64(0.51),
		f64(math.Inf(1)), f64(math.Inf(-1)), f64(math.Copysign(0, -1)), f64(0), f64(0.5), f64(1e-300), f64(0.31),
		f64(4.9e-324), f64(-4.9e-324), f64(math.Nextafter(0.5, 1)), f64(math.Nextafter(0.001, 0))}
	vec := func(n uint32, b ...byte) []byte { w := wire.Writer{}; w.U32(n); return append(w.B, b...) }
	inputs := [][]byte{nil, {1, 2}, vec(9, 0xff), vec(9, 0xff, 0xff), vec(9, 0xff, 0x01), vec(9, 0xff, 0x01, 0),
		vec(3, 0xff), vec(0), vec(0, 0), vec(64, 1, 2, 3, 4, 5, 6, 7, 8), vec(0xffffffff, 1, 2)}
	for _, name := range cascadePlugins {
		for _, p := range params {
			for _, role := range []steps.Role{steps.Alice, steps.Bob} {
				for _, in := range inputs {
					tw, err := newTwin(t, rs[name], name, role, p, []byte("x"))
					if err != nil {
						break // both refused the parameters
					}
					// a peer message first (wrong), the input, the input
					// again (wrong), a query batch, an empty peer message
					tw.step(steps.Input{Peer: []byte{0, 0, 0, 0}, HasPeer: true})
					tw.step(steps.Input{Data: in})
					tw.step(steps.Input{Data: in})
					tw.step(steps.Input{Peer: []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, HasPeer: true})
					tw.step(steps.Input{Peer: nil, HasPeer: true})
					tw.step(steps.Input{Peer: []byte{0, 0, 0, 0}, HasPeer: true})
					tw.step(steps.Input{Peer: []byte{0, 0, 0, 0}, HasPeer: true})
				}
			}
		}
	}
}

// TestCCascadeBadMessages replaces, one at a time, a message a party
// receives in a genuine session with malformed or altered variants, and
// checks the C and Go builds agree on the call that receives it.
func TestCCascadeBadMessages(t *testing.T) {
	rs := cRunners(t)
	u32 := func(x uint32) []byte { return binary.LittleEndian.AppendUint32(nil, x) }
	query := func(p uint8, b, h uint32) []byte {
		return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32([]byte{p}, b), h)
	}
	batch := func(qs ...[]byte) []byte {
		m := u32(uint32(len(qs)))
		for _, q := range qs {
			m = append(m, q...)
		}
		return m
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	// variants of a message m that Alice (toAlice) or Bob receives
	variants := func(toAlice bool, k int, m []byte, r *bits.RNG) [][]byte {
		vs := [][]byte{nil, m[:len(m)-1], cat(m, []byte{0}), {0, 0, 0}}
		if toAlice {
			flipped := cat(m)
			flipped[int(r.Uint64()%uint64(len(m)))] ^= 1 << (r.Uint64() % 8)
			vs = append(vs, flipped,
				batch(query(0, 0, 1)), batch(query(0, 0, 0)), batch(query(14, 0, 1)), batch(query(10, 0, 1)),
				batch(query(255, 0, 1)), batch(query(1, 0xffffffff, 1)), batch(query(0, 0, 0xffffffff)),
				batch(query(3, 1, 2)), batch(query(4, 0, 3)), batch(query(0, 0, 1<<20)), batch(query(2, 0, 4095)),
				batch(query(13, 1, 65536)), batch(query(9, 0, 9)), batch(query(1, 1, 1), query(0, 0, 0)),
				cat(u32(2), query(0, 0, 1)), cat(u32(0), []byte{0}), u32(0), u32(0xffffffff), cat(batch(query(1, 0, 2)), []byte{1}))
			// random queries, many of them valid
			for j := 0; j < 4; j++ {
				var qs [][]byte
				for i := 0; i < 40; i++ {
					qs = append(qs, query(uint8(r.Uint64()%15), uint32(r.Uint64()%(3<<j)), uint32(r.Uint64()%(64<<(2*j)))))
				}
				vs = append(vs, batch(qs...))
			}
			return vs
		}
		// Bob: only variants he must reject (see errTampered); the count
		// is at offset 32 of the first message, 0 of an answer
		off := 0
		if k == 0 {
			off = 32
			vs = append(vs, m[:31], m[:32], m[:35])
		}
		if len(m) >= off+4 {
			cnt := binary.LittleEndian.Uint32(m[off:])
			for _, c := range []uint32{cnt + 1, cnt - 1, cnt + 8, cnt - 8, 0, 1 << 31} {
				if c != cnt {
					vs = append(vs, cat(m[:off], u32(c), m[off+4:]))
				}
			}
			if cnt%8 != 0 { // bits beyond the count are ignored: not rejected, same result
				pad := cat(m)
				pad[len(pad)-1] |= 0x80
				vs = append(vs, pad)
			}
		}
		return vs
	}
	for _, name := range cascadePlugins {
		for _, tc := range []struct {
			n int
			q float64
		}{{1, 0}, {2, 0.5}, {65, 0.05}, {700, 0.03}, {5000, 0.02}} {
			a, b := keyPair(fmt.Sprint("bad", tc), tc.n, tc.q)
			var total int // messages delivered in a genuine run
			if _, _, err := lockstep(t, rs[name], name, tc.q, []byte("m"), a, b, func(_ bool, k int, m []byte) ([]byte, bool) {
				total = k + 1
				return m, false
			}); err != nil {
				t.Fatal(err)
			}
			r := bits.NewRNG([]byte(fmt.Sprint(tc)), "bad-messages")
			for k := 0; k < total; k++ {
				if k > 4 && k < total-4 && k%9 != 0 {
					continue
				}
				for v := 0; ; v++ {
					last := false
					t.Run(fmt.Sprintf("%s/n=%d/msg=%d/variant=%d", name, tc.n, k, v), func(t *testing.T) {
						_, _, err := lockstep(t, rs[name], name, tc.q, []byte("m"), a, b, func(toAlice bool, kk int, m []byte) ([]byte, bool) {
							if kk != k {
								return m, false
							}
							vs := variants(toAlice, k, m, r)
							if v >= len(vs) {
								last = true
								return m, false
							}
							return vs[v], true
						})
						if err != nil && err != errTampered {
							t.Logf("rejected: %v", err)
						}
					})
					if last {
						break
					}
				}
			}
		}
	}
}

// TestCCascadeAfterError: a party that rejected a message keeps agreeing
// with Go afterwards (the session would be aborted, but the plugin's state
// is still observable). Every message is first delivered with a byte too
// many, which both builds must reject, and then as sent.
func TestCCascadeAfterError(t *testing.T) {
	rs := cRunners(t)
	for _, name := range cascadePlugins {
		for _, tc := range []struct {
			n int
			q float64
		}{{1, 0}, {100, 0.05}, {3000, 0.03}, {20001, 0.02}} {
			a, b := keyPair(fmt.Sprint("after", tc), tc.n, tc.q)
			params := cascade.Params(tc.q)
			ta, _ := newTwin(t, rs[name], name, steps.Alice, params, []byte("s"))
			tb, _ := newTwin(t, rs[name], name, steps.Bob, params, []byte("s"))
			ra, _ := ta.step(steps.Input{Data: vecIn(a)})
			rb, _ := tb.step(steps.Input{Data: vecIn(b)})
			for !(ra.Done && rb.Done) {
				var to *twin
				var m []byte
				switch {
				case ra.HasMsg && !rb.Done:
					to, m = tb, ra.Msg
					ra.HasMsg = false
				case rb.HasMsg && !ra.Done:
					to, m = ta, rb.Msg
					rb.HasMsg = false
				default:
					t.Fatal("both parties wait")
				}
				if _, err := to.step(steps.Input{Peer: append(append([]byte(nil), m...), 0), HasPeer: true}); err == nil {
					t.Fatal("a message with a trailing byte was accepted")
				}
				res, err := to.step(steps.Input{Peer: m, HasPeer: true})
				if err != nil {
					t.Fatal(err)
				}
				if to == ta {
					ra = res
				} else {
					rb = res
				}
			}
			// calls after the end
			ta.step(steps.Input{Peer: []byte{0, 0, 0, 0}, HasPeer: true})
			tb.step(steps.Input{Peer: []byte{0, 0, 0, 0}, HasPeer: true})
			ta.step(steps.Input{Data: vecIn(a)})

			// Bob: a first message with the wrong number of parities (the
			// passes are built anyway, so the next message is read as
			// answers)
			tb, _ = newTwin(t, rs[name], name, steps.Bob, params, []byte("s"))
			tb.step(steps.Input{Data: vecIn(b)})
			ta, _ = newTwin(t, rs[name], name, steps.Alice, params, []byte("s"))
			ra, _ = ta.step(steps.Input{Data: vecIn(a)})
			tb.step(steps.Input{Peer: append(append([]byte(nil), ra.Msg[:32]...), 1, 0, 0, 0, 1), HasPeer: true})
			tb.step(steps.Input{Peer: ra.Msg, HasPeer: true})
			tb.step(steps.Input{Peer: []byte{0, 0, 0, 0}, HasPeer: true})
			tb.step(steps.Input{Peer: []byte{0, 0, 0, 0}, HasPeer: true})
		}
	}
}

// TestCCascadeKeyLengths: Alice's and Bob's keys of different lengths. Bob
// checks the number of top-level parities against his own block sizes;
// where they differ both builds must reject the first message.
func TestCCascadeKeyLengths(t *testing.T) {
	rs := cRunners(t)
	for _, name := range cascadePlugins {
		for _, nn := range [][2]int{{1000, 2000}, {2000, 1000}, {64, 0}, {0, 64}, {5000, 4000}} {
			a, _ := keyPair(fmt.Sprint("len", nn), nn[0], 0)
			b, _ := keyPair(fmt.Sprint("len", nn), nn[1], 0)
			if _, _, err := lockstep(t, rs[name], name, 0.02, []byte("k"), a, b, nil); err == nil {
				t.Fatalf("%s: keys of %d and %d bits reconciled", name, nn[0], nn[1])
			}
		}
	}
}
