package host_test

// The C builds of sift, estimate and verify (plugins/c/{sift,estimate,
// verify}, committed as plugins/c/wasm/*.wasm) against the Go steps run
// natively: both parties driven call by call as RunPair does, every result
// (output, message, metrics, flags) compared at every call, and errors
// compared by their whole text (the C builds word them as Go does).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"qkdkms/plugins/host"
	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/estimate"
	"qkdkms/plugins/steps/sift"
	"qkdkms/plugins/steps/verify"
	"qkdkms/plugins/steps/wire"
	"qkdkms/plugins/testenv"
)

// csRunners loads the committed C builds of sift, estimate and verify into a
// fresh host and returns the C runner and the native Go runner.
func csRunners(t testing.TB) [2]host.Runner {
	t.Helper()
	h := cHost(t, cModule{kind: steps.Sift, name: sift.Name, version: sift.Version},
		cModule{kind: steps.Estimate, name: estimate.Name, version: estimate.Version},
		cModule{kind: steps.Verify, name: verify.Name, version: verify.Version})
	return cAndNative(t, h, host.Selection{steps.Sift: sift.Name, steps.Estimate: estimate.Name, steps.Verify: verify.Name})
}

// csParty is one party of one step, run by the C build and natively.
type csParty struct {
	t    testing.TB
	name string
	c, n host.Instance
	call int
}

// csSameErr fails unless both errors are nil, or both are plugin errors
// with the same text.
func csSameErr(t testing.TB, what string, cerr, nerr error) {
	t.Helper()
	if (cerr == nil) != (nerr == nil) {
		t.Fatalf("%s: C error %v, Go error %v", what, cerr, nerr)
	}
	if cerr == nil {
		return
	}
	if !errors.Is(cerr, host.ErrPlugin) || !errors.Is(nerr, host.ErrPlugin) || cerr.Error() != nerr.Error() {
		t.Fatalf("%s: errors differ:\nC  %v\nGo %v", what, cerr, nerr)
	}
}

func csNew(t testing.TB, rs [2]host.Runner, kind steps.Kind, role steps.Role, params, seed []byte) (*csParty, error) {
	t.Helper()
	ctx := context.Background()
	ci, cerr := rs[0].New(ctx, kind, role, params, seed)
	ni, nerr := rs[1].New(ctx, kind, role, params, seed)
	csSameErr(t, fmt.Sprintf("%s %v new", kind, role), cerr, nerr)
	if nerr != nil {
		return nil, nerr
	}
	t.Cleanup(func() { ci.Close(ctx); ni.Close(ctx) })
	return &csParty{t: t, name: fmt.Sprintf("%s/%v", kind, role), c: ci, n: ni}, nil
}

// step makes the same call on both builds and fails the test unless they
// agree on everything; it returns the common result or error.
func (p *csParty) step(in steps.Input) (steps.Result, error) {
	p.t.Helper()
	ctx := context.Background()
	p.call++
	cr, cerr := p.c.Step(ctx, in)
	nr, nerr := p.n.Step(ctx, in)
	csSameErr(p.t, fmt.Sprintf("%s call %d", p.name, p.call), cerr, nerr)
	if nerr != nil {
		return steps.Result{}, nerr
	}
	if cr.Done != nr.Done || cr.HasMsg != nr.HasMsg || cr.Metrics != nr.Metrics ||
		!bytes.Equal(cr.Output, nr.Output) || !bytes.Equal(cr.Msg, nr.Msg) {
		p.t.Fatalf("%s call %d: C and Go differ:\nC  done=%v msg=%v %+v output %d bytes %x, message %d bytes %x\nGo done=%v msg=%v %+v output %d bytes %x, message %d bytes %x",
			p.name, p.call, cr.Done, cr.HasMsg, cr.Metrics, len(cr.Output), head(cr.Output), len(cr.Msg), head(cr.Msg),
			nr.Done, nr.HasMsg, nr.Metrics, len(nr.Output), head(nr.Output), len(nr.Msg), head(nr.Msg))
	}
	return nr, nil
}

// csCase is one run of a step: both parties' params, seeds and inputs, and
// optionally a change to the k-th message delivered (k from 0).
type csCase struct {
	kind         steps.Kind
	params       []byte
	seedA, seedB []byte
	inA, inB     []byte
	tamper       func(toAlice bool, k int, m []byte) []byte
}

// csRun drives Alice and Bob in both builds as host.RunPair does and returns
// their last results, or the first error (both builds agreeing on it).
func csRun(t testing.TB, rs [2]host.Runner, c csCase) (ra, rb steps.Result, err error) {
	t.Helper()
	a, err := csNew(t, rs, c.kind, steps.Alice, c.params, c.seedA)
	if err != nil {
		return
	}
	b, err := csNew(t, rs, c.kind, steps.Bob, c.params, c.seedB)
	if err != nil {
		return
	}
	if ra, err = a.step(steps.Input{Data: c.inA}); err != nil {
		return
	}
	if rb, err = b.step(steps.Input{Data: c.inB}); err != nil {
		return
	}
	for k := 0; !(ra.Done && rb.Done); k++ {
		switch {
		case ra.HasMsg && !rb.Done:
			m := ra.Msg
			if c.tamper != nil {
				m = c.tamper(false, k, append([]byte(nil), m...))
			}
			ra.HasMsg = false
			if rb, err = b.step(steps.Input{Peer: m, HasPeer: true}); err != nil {
				return
			}
		case rb.HasMsg && !ra.Done:
			m := rb.Msg
			if c.tamper != nil {
				m = c.tamper(true, k, append([]byte(nil), m...))
			}
			rb.HasMsg = false
			if ra, err = a.step(steps.Input{Peer: m, HasPeer: true}); err != nil {
				return
			}
		default:
			t.Fatalf("%s: both parties wait (alice done=%v, bob done=%v)", c.kind, ra.Done, rb.Done)
		}
	}
	return
}

// csDetections is a session's detections: n positions, Alice's bits, bases
// and intensities (< k) and Bob's bases and bits (Alice's bit flipped with
// probability q where the bases agree, a coin otherwise).
func csDetections(r *bits.RNG, n, k int, q float64) (a, b sift.Input) {
	a = sift.Input{Bits: csRand(r, n), Bases: csRand(r, n), Intensity: make([]uint8, n)}
	b = sift.Input{Bits: bits.New(n), Bases: csRand(r, n)}
	for i := 0; i < n; i++ {
		a.Intensity[i] = uint8(r.Uint64() % uint64(k))
		x := a.Bits.Get(i)
		if a.Bases.Get(i) != b.Bases.Get(i) {
			x = uint8(r.Uint64() & 1)
		} else if float64(r.Uint64()>>11)/(1<<53) < q {
			x ^= 1
		}
		b.Bits.Set(i, x)
	}
	return a, b
}

// csRand is a random vector of n bits, a word at a time.
func csRand(r *bits.RNG, n int) bits.Vec {
	v := bits.New(n)
	for i := range v.W {
		v.W[i] = r.Uint64()
	}
	if n%64 != 0 {
		v.W[len(v.W)-1] &= 1<<(uint(n)%64) - 1
	}
	return v
}

// csDirty sets the bits beyond a vec's n in its wire form (the padding of
// its last byte), which every step must ignore.
func csDirty(b []byte, n int) []byte {
	b = append([]byte(nil), b...)
	if n%8 != 0 {
		b[4+n/8] |= ^byte(1<<(n%8) - 1)
	}
	return b
}

// csPipeline runs sift, then estimate on its outputs, then verify on the Z
// keys (Alice's for both, then Bob's own, which differ when q > 0), both
// builds in lockstep at every step; it returns the number of Z bits.
func csPipeline(t testing.TB, rs [2]host.Runner, r *bits.RNG, name string, n, k int, q float64, seed []byte, tt int) int {
	t.Helper()
	a, b := csDetections(r, n, k, q)
	inA, inB := a.Encode(steps.Alice), b.Encode(steps.Bob)
	if r.Uint64()%2 == 0 {
		// padding bits set in the bits and bases: ignored by both
		nb := (n + 7) / 8
		if n%8 != 0 {
			for _, in := range [][]byte{inA, inB} {
				in[4+nb-1] |= ^byte(1<<(n%8) - 1)
				in[4+2*nb-1] |= ^byte(1<<(n%8) - 1)
			}
		}
	}
	ra, rb, err := csRun(t, rs, csCase{kind: steps.Sift, params: []byte{byte(k)}, seedA: seed, seedB: []byte("b"), inA: inA, inB: inB})
	if err != nil {
		t.Fatalf("%s: sift: %v", name, err)
	}
	sa, err := sift.DecodeSifted(ra.Output)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	sb, err := sift.DecodeSifted(rb.Output)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if sa.Z.N != sb.Z.N || sa.X.N != sb.X.N || !bytes.Equal(sa.ZInt, sb.ZInt) || !bytes.Equal(sa.XInt, sb.XInt) {
		t.Fatalf("%s: Alice's and Bob's sifted positions differ", name)
	}
	if q == 0 && (!sa.Z.Equal(sb.Z) || !sa.X.Equal(sb.X)) {
		t.Fatalf("%s: sifted bits differ without errors", name)
	}
	ea, eb := ra.Output, rb.Output
	if r.Uint64()%2 == 0 {
		ea, eb = csDirtySifted(sa), csDirtySifted(sb)
	}
	ra, rb, err = csRun(t, rs, csCase{kind: steps.Estimate, seedA: seed, inA: ea, inB: eb})
	if err != nil {
		t.Fatalf("%s: estimate: %v", name, err)
	}
	oa, err := estimate.DecodeOutput(ra.Output)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var mx uint64
	for _, m := range oa.MX {
		mx += m
	}
	if int(mx) != sa.X.Diff(sb.X) {
		t.Fatalf("%s: estimate counts %d X errors, the sifted X bits differ in %d", name, mx, sa.X.Diff(sb.X))
	}
	ob, _ := estimate.DecodeOutput(rb.Output)
	params := []byte{byte(tt)}
	for _, keys := range [][2]bits.Vec{{oa.Key, oa.Key}, {oa.Key, ob.Key}} {
		ka, kb := vecIn(keys[0]), vecIn(keys[1])
		if r.Uint64()%2 == 0 {
			ka, kb = csDirty(ka, keys[0].N), csDirty(kb, keys[1].N)
		}
		ra, rb, err = csRun(t, rs, csCase{kind: steps.Verify, params: params, seedA: seed, seedB: []byte("bob"), inA: ka, inB: kb})
		if err != nil {
			t.Fatalf("%s: verify: %v", name, err)
		}
		want := byte(0)
		if keys[0].Equal(keys[1]) {
			want = 1
		}
		if len(ra.Output) != 1 || !bytes.Equal(ra.Output, rb.Output) || (want == 1 && ra.Output[0] != 1) {
			t.Fatalf("%s: verify verdicts %x %x, keys equal: %v", name, ra.Output, rb.Output, want == 1)
		}
	}
	return sa.Z.N
}

// csDirtySifted is the wire form of s with the padding bits of both vecs set.
func csDirtySifted(s sift.Sifted) []byte {
	w := wire.Writer{}
	w.U8(s.K)
	w.B = append(w.B, csDirty(vecIn(s.Z), s.Z.N)...)
	w.Bytes(s.ZInt)
	w.B = append(w.B, csDirty(vecIn(s.X), s.X.N)...)
	w.Bytes(s.XInt)
	return w.B
}

// TestCStepsMatchGo: the whole pipeline sift → estimate → verify on sizes
// around every boundary (empty, bytes, words) and random sizes, QBER 0, 1,
// 2, 5 and 50 %, K from 1 to 255, t from 1 to 64, seeds absent, short,
// exactly as long as verify's hash needs and longer.
func TestCStepsMatchGo(t *testing.T) {
	rs := csRunners(t)
	r := bits.NewRNG([]byte("c-steps"), "test")
	sizes := []int{0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 128, 129, 191, 255, 256, 257, 1000, 1023, 1024, 4097}
	nrand := 60
	if testenv.Race {
		nrand = 40
	}
	for len(sizes) < nrand {
		sizes = append(sizes, 1+int(r.Uint64()%30000))
	}
	if !testing.Short() && !testenv.Race {
		sizes = append(sizes, 200_000, 400_001)
	}
	qs := []float64{0, 0.01, 0.02, 0.05, 0.5}
	ks := []int{1, 2, 3, 4, 255}
	ts := []int{1, 2, 7, 32, 63, 64}
	runs := 0
	for i, n := range sizes {
		q, k, tt := qs[i%len(qs)], ks[i%len(ks)], ts[i%len(ts)]
		// verify's hash takes ceil((n_Z+t−1)/8) bytes, n_Z ≈ n/4
		seeds := [][]byte{nil, []byte("s"), make([]byte, (n/4+tt+6)/8), make([]byte, n/2+100)}
		for _, s := range seeds[2:] {
			for j := range s {
				s[j] = byte(r.Uint64())
			}
		}
		for si, seed := range seeds {
			if n > 50000 && si != 1 && si != 3 {
				continue
			}
			name := fmt.Sprintf("%d/n=%d/q=%g/K=%d/t=%d/seed=%d", i, n, q, k, tt, len(seed))
			csPipeline(t, rs, r, name, n, k, q, seed, tt)
			runs++
		}
	}
	t.Logf("%d pipelines", runs)
}

// TestCVerifySeeds: verify on every t and on seeds of every length around
// the hash's need (the host's seed as is, or its ChaCha8 expansion), keys
// equal and differing in one bit.
func TestCVerifySeeds(t *testing.T) {
	rs := csRunners(t)
	r := bits.NewRNG([]byte("c-verify"), "test")
	for _, n := range []int{0, 1, 5, 64, 65, 200, 1000, 3001} {
		for tt := 1; tt <= 64; tt++ {
			if n > 200 && tt%7 != 1 {
				continue
			}
			need := (n + tt + 6) / 8
			x := csRand(r, n)
			y := x.Clone()
			if n > 0 {
				y.Flip(int(r.Uint64() % uint64(n)))
			}
			for _, sl := range []int{0, 1, need - 1, need, need + 1, need + 300} {
				if sl < 0 {
					continue
				}
				seed := make([]byte, sl)
				for j := range seed {
					seed[j] = byte(r.Uint64())
				}
				for _, key := range []bits.Vec{x, y} {
					ra, _, err := csRun(t, rs, csCase{kind: steps.Verify, params: []byte{byte(tt)}, seedA: seed, inA: vecIn(x), inB: vecIn(key)})
					if err != nil {
						t.Fatalf("n=%d t=%d seed=%d: %v", n, tt, sl, err)
					}
					if key.Equal(x) && ra.Output[0] != 1 {
						t.Fatalf("n=%d t=%d seed=%d: equal keys refused", n, tt, sl)
					}
				}
			}
		}
	}
}

// TestCStepsErrors: malformed params, inputs and messages, and calls out of
// turn, fail in the C builds exactly where and as the Go steps fail (the
// same error text); odd but valid ones give the same results.
func TestCStepsErrors(t *testing.T) {
	rs := csRunners(t)
	r := bits.NewRNG([]byte("c-steps-errors"), "test")
	da, db := csDetections(r, 300, 3, 0.02)
	sa, sb := da.Encode(steps.Alice), db.Encode(steps.Bob)
	ra, rb, err := csRun(t, rs, csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb})
	if err != nil {
		t.Fatal(err)
	}
	ea, eb := ra.Output, rb.Output
	key := vecIn(csRand(r, 100))
	cut := func(b []byte, k int) []byte { return append([]byte(nil), b[:len(b)-k]...) }
	extra := func(b []byte) []byte { return append(append([]byte(nil), b...), 0) }
	set := func(b []byte, i int, v byte) []byte { b = append([]byte(nil), b...); b[i] = v; return b }
	u32 := func(x uint32) []byte { w := wire.Writer{}; w.U32(x); return w.B }
	onMsg := func(toAlice bool, k int, f func([]byte) []byte) func(bool, int, []byte) []byte {
		return func(ta bool, kk int, m []byte) []byte {
			if ta == toAlice && kk == k {
				return f(m)
			}
			return m
		}
	}
	// Alice's intensities start at 4+2·38 in sift's input, and at 4+38+4
	// in her answer to Bob's bases
	bad := append([]byte(nil), sa...)
	bad[4+2*38+299] = 3
	cases := []struct {
		name    string
		c       csCase
		wantErr bool
	}{
		{"sift: no params", csCase{kind: steps.Sift, inA: sa, inB: sb}, true},
		{"sift: K = 0", csCase{kind: steps.Sift, params: []byte{0}, inA: sa, inB: sb}, true},
		{"sift: long params", csCase{kind: steps.Sift, params: []byte{3, 0}, inA: sa, inB: sb}, true},
		{"sift: empty input", csCase{kind: steps.Sift, params: []byte{3}, inA: nil, inB: sb}, true},
		{"sift: short n", csCase{kind: steps.Sift, params: []byte{3}, inA: sa[:3], inB: sb}, true},
		{"sift: Alice short", csCase{kind: steps.Sift, params: []byte{3}, inA: cut(sa, 1), inB: sb}, true},
		{"sift: Alice no intensities", csCase{kind: steps.Sift, params: []byte{3}, inA: sa[:4+2*38], inB: sb}, true},
		{"sift: Alice trailing", csCase{kind: steps.Sift, params: []byte{3}, inA: extra(sa), inB: sb}, true},
		{"sift: Bob short", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: cut(sb, 1)}, true},
		{"sift: Bob trailing", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: extra(sb)}, true},
		{"sift: Bob huge n", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: set(sb, 3, 0xFF)}, true},
		{"sift: intensity ≥ K", csCase{kind: steps.Sift, params: []byte{3}, inA: bad, inB: sb}, true},
		{"sift: intensity < K = 4", csCase{kind: steps.Sift, params: []byte{4}, inA: bad, inB: sb}, false},
		{"sift: empty", csCase{kind: steps.Sift, params: []byte{1}, inA: u32(0), inB: u32(0)}, false},
		{"sift: Bob's bases short", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(true, 0, func(m []byte) []byte { return m[:len(m)-1] })}, true},
		{"sift: Bob's bases empty", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(true, 0, func(m []byte) []byte { return nil })}, true},
		{"sift: Bob's bases trailing", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(true, 0, extra)}, true},
		{"sift: Bob's bases other n", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(true, 0, func(m []byte) []byte { return vecIn(csRand(r, 299)) })}, true},
		{"sift: Bob's bases changed", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(true, 0, func(m []byte) []byte { m[10] ^= 0x5A; return m })}, false},
		{"sift: Bob's bases padding", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(true, 0, func(m []byte) []byte { m[len(m)-1] |= 0xF0; return m })}, false},
		{"sift: Alice's answer short", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(false, 1, func(m []byte) []byte { return m[:len(m)-1] })}, true},
		{"sift: Alice's answer no intensities", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(false, 1, func(m []byte) []byte { return m[:4+38] })}, true},
		{"sift: Alice's answer trailing", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(false, 1, extra)}, true},
		{"sift: Alice's answer intensity ≥ K", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(false, 1, func(m []byte) []byte { m[4+38+4+17] = 200; return m })}, true},
		{"sift: Alice's answer bases changed", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(false, 1, func(m []byte) []byte { m[7] ^= 0xFF; return m })}, false},
		{"sift: Alice's answer short n", csCase{kind: steps.Sift, params: []byte{3}, inA: sa, inB: sb, tamper: onMsg(false, 1, func(m []byte) []byte { return m[:2] })}, true},

		{"estimate: params", csCase{kind: steps.Estimate, params: []byte{0}, inA: ea, inB: eb}, true},
		{"estimate: empty input", csCase{kind: steps.Estimate, inA: nil, inB: eb}, true},
		{"estimate: Alice short", csCase{kind: steps.Estimate, inA: cut(ea, 1), inB: eb}, true},
		{"estimate: Bob short", csCase{kind: steps.Estimate, inA: ea, inB: cut(eb, 3)}, true},
		{"estimate: K only", csCase{kind: steps.Estimate, inA: ea[:1], inB: eb}, true},
		{"estimate: trailing", csCase{kind: steps.Estimate, inA: ea, inB: extra(eb)}, true},
		{"estimate: K too small", csCase{kind: steps.Estimate, inA: set(ea, 0, 1), inB: eb}, true},
		{"estimate: K = 0", csCase{kind: steps.Estimate, inA: set(ea, 0, 0), inB: eb}, true},
		{"estimate: K larger", csCase{kind: steps.Estimate, inA: set(ea, 0, 200), inB: set(eb, 0, 7)}, false},
		{"estimate: list lengths", csCase{kind: steps.Estimate, inA: csLengths(t, ea), inB: eb}, true},
		{"estimate: X intensity ≥ K", csCase{kind: steps.Estimate, inA: csXInt(t, ea, 9), inB: eb}, true},
		{"estimate: empty sifted", csCase{kind: steps.Estimate, inA: sift.Sifted{K: 0}.Encode(), inB: sift.Sifted{K: 3}.Encode()}, false},
		{"estimate: peer X short", csCase{kind: steps.Estimate, inA: ea, inB: eb, tamper: onMsg(false, 0, func(m []byte) []byte { return m[:len(m)-1] })}, true},
		{"estimate: peer X empty", csCase{kind: steps.Estimate, inA: ea, inB: eb, tamper: onMsg(false, 0, func(m []byte) []byte { return nil })}, true},
		{"estimate: peer X trailing", csCase{kind: steps.Estimate, inA: ea, inB: eb, tamper: onMsg(true, 1, extra)}, true},
		{"estimate: peer X other n", csCase{kind: steps.Estimate, inA: ea, inB: eb, tamper: onMsg(true, 1, func(m []byte) []byte { return vecIn(csRand(r, 3)) })}, true},
		{"estimate: peer X changed", csCase{kind: steps.Estimate, inA: ea, inB: eb, tamper: onMsg(false, 0, func(m []byte) []byte { m[4] ^= 0xFF; return m })}, false},
		{"estimate: peer X padding", csCase{kind: steps.Estimate, inA: ea, inB: eb, tamper: onMsg(true, 1, func(m []byte) []byte { m[len(m)-1] |= 0x80; return m })}, false},

		{"verify: no params", csCase{kind: steps.Verify, inA: key, inB: key}, true},
		{"verify: t = 0", csCase{kind: steps.Verify, params: []byte{0}, inA: key, inB: key}, true},
		{"verify: t = 65", csCase{kind: steps.Verify, params: []byte{65}, inA: key, inB: key}, true},
		{"verify: long params", csCase{kind: steps.Verify, params: []byte{8, 0}, inA: key, inB: key}, true},
		{"verify: empty input", csCase{kind: steps.Verify, params: []byte{8}, inA: nil, inB: key}, true},
		{"verify: short input", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: cut(key, 1)}, true},
		{"verify: trailing input", csCase{kind: steps.Verify, params: []byte{8}, inA: extra(key), inB: key}, true},
		{"verify: empty key", csCase{kind: steps.Verify, params: []byte{1}, inA: u32(0), inB: u32(0)}, false},
		{"verify: other key length", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: vecIn(csRand(r, 90))}, true},
		{"verify: message short", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: key, tamper: onMsg(false, 0, func(m []byte) []byte { return m[:len(m)-1] })}, true},
		{"verify: message empty", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: key, tamper: onMsg(false, 0, func(m []byte) []byte { return nil })}, true},
		{"verify: message trailing", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: key, tamper: onMsg(false, 0, extra)}, true},
		{"verify: tag changed", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: key, tamper: onMsg(false, 0, func(m []byte) []byte { m[len(m)-8] ^= 1; return m })}, false},
		{"verify: seed changed", csCase{kind: steps.Verify, params: []byte{64}, inA: key, inB: key, tamper: onMsg(false, 0, func(m []byte) []byte { m[3] ^= 0x10; return m })}, false},
		{"verify: verdict 2", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: key, tamper: onMsg(true, 1, func(m []byte) []byte { return []byte{2} })}, true},
		{"verify: verdict long", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: key, tamper: onMsg(true, 1, extra)}, true},
		{"verify: verdict empty", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: key, tamper: onMsg(true, 1, func(m []byte) []byte { return nil })}, true},
		{"verify: verdict 0", csCase{kind: steps.Verify, params: []byte{8}, inA: key, inB: key, tamper: onMsg(true, 1, func(m []byte) []byte { return []byte{0} })}, false},
	}
	for _, tc := range cases {
		_, _, err := csRun(t, rs, tc.c)
		if (err != nil) != tc.wantErr {
			t.Fatalf("%s: error %v, want error %v", tc.name, err, tc.wantErr)
		}
		if err != nil {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

// csLengths: a sifted input whose Z intensity list is one short.
func csLengths(t testing.TB, b []byte) []byte {
	s, err := sift.DecodeSifted(b)
	if err != nil {
		t.Fatal(err)
	}
	s.ZInt = s.ZInt[:len(s.ZInt)-1]
	return s.Encode()
}

// csXInt: a sifted input with X intensity i set to K.
func csXInt(t testing.TB, b []byte, i int) []byte {
	s, err := sift.DecodeSifted(b)
	if err != nil {
		t.Fatal(err)
	}
	s.XInt = append([]byte(nil), s.XInt...)
	s.XInt[i] = s.K
	return s.Encode()
}

// TestCStepsOutOfTurn: calls the protocol does not make (a message first,
// an input twice, a call after done), and a good call after an error (the
// state a failed call leaves behind), in both builds.
func TestCStepsOutOfTurn(t *testing.T) {
	rs := csRunners(t)
	r := bits.NewRNG([]byte("c-steps-turn"), "test")
	da, db := csDetections(r, 100, 2, 0.05)
	inputs := map[steps.Kind][2][]byte{steps.Sift: {da.Encode(steps.Alice), db.Encode(steps.Bob)}}
	ra, rb, err := csRun(t, rs, csCase{kind: steps.Sift, params: []byte{2}, inA: inputs[steps.Sift][0], inB: inputs[steps.Sift][1]})
	if err != nil {
		t.Fatal(err)
	}
	inputs[steps.Estimate] = [2][]byte{ra.Output, rb.Output}
	key := vecIn(csRand(r, 77))
	inputs[steps.Verify] = [2][]byte{key, key}
	params := map[steps.Kind][]byte{steps.Sift: {2}, steps.Estimate: nil, steps.Verify: {16}}
	for _, kind := range []steps.Kind{steps.Sift, steps.Estimate, steps.Verify} {
		for ri, role := range []steps.Role{steps.Alice, steps.Bob} {
			in := inputs[kind][ri]
			calls := [][]steps.Input{
				{{Peer: []byte{1}, HasPeer: true}, {Data: in}}, // a message first
				{{Data: in}, {Data: in}},                       // the input twice
				{{Data: in[:len(in)-1]}, {Data: in}},           // a bad input, then the good one
				{{Data: in}, {Peer: []byte{1, 2, 3}, HasPeer: true}, {Peer: []byte{1}, HasPeer: true}, {Data: in}}, // bad messages
				{{Data: nil}, {}, {Data: in}}, // empty calls
			}
			for ci, seq := range calls {
				p, err := csNew(t, rs, kind, role, params[kind], []byte("seed"))
				if err != nil {
					t.Fatal(err)
				}
				p.name = fmt.Sprintf("%s/%v/seq %d", kind, role, ci)
				for _, c := range seq {
					p.step(c)
				}
			}
		}
	}
}
