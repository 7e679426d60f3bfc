package host_test

// The C build of the amplify step (plugins/c/amplify, committed as
// plugins/c/wasm/amplify.wasm) against the Go step run natively: both
// parties driven call by call as RunPair does, every result (output,
// message, metrics, flags, error or not) compared, and the output checked
// against the direct Toeplitz product.

import (
	"bytes"
	"context"
	"fmt"
	mbits "math/bits"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"qkdkms/plugins/host"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/amplify"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/wire"
	"qkdkms/plugins/testenv"
)

// ampCRunner loads the committed C build into a fresh host.
func ampCRunner(t testing.TB) host.Runner {
	t.Helper()
	root, err := pluginbuild.Root()
	if err != nil {
		t.Fatal(err)
	}
	return ampCRunnerFrom(t, filepath.Join(root, "plugins", "c", "wasm", "amplify.wasm"))
}

// ampCRunnerFrom loads a build of the C plugin (at path) into a fresh host,
// under the name "amplify".
func ampCRunnerFrom(t testing.TB, path string) host.Runner {
	t.Helper()
	h := cHost(t, cModule{kind: steps.Amplify, name: "amplify", version: "1.0.0", path: path})
	r, err := h.Runner(host.Selection{steps.Amplify: "amplify"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ampNative(t testing.TB) host.Runner {
	t.Helper()
	r, err := host.Native(host.Selection{steps.Amplify: "amplify"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ampU32(x uint32) []byte { w := wire.Writer{}; w.U32(x); return w.B }

// ampRandVec is a random vector of n bits, a word at a time.
func ampRandVec(r *bits.RNG, n int) bits.Vec {
	v := bits.New(n)
	for i := range v.W {
		v.W[i] = r.Uint64()
	}
	if n%64 != 0 {
		v.W[len(v.W)-1] &= 1<<(uint(n)%64) - 1
	}
	return v
}

// ampCase is one session of the step: both parties' params, seeds and
// inputs, and optionally a change to Alice's message on its way to Bob.
type ampCase struct {
	name           string
	params         []byte
	seedA, seedB   []byte
	inA, inB       []byte
	tamper         func([]byte) []byte
	extraA, extraB bool // one more call after the party is done
}

// ampParty is one party's instance in both implementations.
type ampParty struct {
	name string
	c, n host.Instance
}

// step makes the same call on both and fails the test unless they agree;
// it returns the common result, or the (native) error.
func (p *ampParty) step(t *testing.T, in steps.Input) (steps.Result, error) {
	t.Helper()
	ctx := context.Background()
	rc, errc := p.c.Step(ctx, in)
	rn, errn := p.n.Step(ctx, in)
	if (errc == nil) != (errn == nil) {
		t.Fatalf("%s: C error %v, Go error %v", p.name, errc, errn)
	}
	if errn != nil {
		return steps.Result{}, errn
	}
	if !bytes.Equal(rc.Output, rn.Output) || rc.Metrics != rn.Metrics || rc.Done != rn.Done || rc.HasMsg != rn.HasMsg || !bytes.Equal(rc.Msg, rn.Msg) {
		t.Fatalf("%s: results differ: C done=%v msg=%v %+v (%d output bytes, %d message bytes), Go done=%v msg=%v %+v (%d, %d)",
			p.name, rc.Done, rc.HasMsg, rc.Metrics, len(rc.Output), len(rc.Msg), rn.Done, rn.HasMsg, rn.Metrics, len(rn.Output), len(rn.Msg))
	}
	return rn, nil
}

// runAmp drives both parties in both implementations as RunPair does and
// returns Alice's and Bob's last results, or the first error (both
// implementations having failed at the same call).
func runAmp(t *testing.T, cr, nr host.Runner, c ampCase) (ra, rb steps.Result, err error) {
	t.Helper()
	ctx := context.Background()
	var ps [2]*ampParty
	for i, role := range []steps.Role{steps.Alice, steps.Bob} {
		seed := [2][]byte{c.seedA, c.seedB}[i]
		ic, errc := cr.New(ctx, steps.Amplify, role, c.params, seed)
		in, errn := nr.New(ctx, steps.Amplify, role, c.params, seed)
		if (errc == nil) != (errn == nil) {
			t.Fatalf("%s new: C error %v, Go error %v", role, errc, errn)
		}
		if errn != nil {
			return ra, rb, errn
		}
		t.Cleanup(func() { ic.Close(ctx); in.Close(ctx) })
		ps[i] = &ampParty{name: role.String(), c: ic, n: in}
	}
	a, b := ps[0], ps[1]
	if ra, err = a.step(t, steps.Input{Data: c.inA}); err != nil {
		return
	}
	if rb, err = b.step(t, steps.Input{Data: c.inB}); err != nil {
		return
	}
	for !(ra.Done && rb.Done) {
		switch {
		case ra.HasMsg && !rb.Done:
			m := ra.Msg
			if c.tamper != nil {
				m = c.tamper(append([]byte(nil), m...))
			}
			ra.HasMsg = false
			if rb, err = b.step(t, steps.Input{Peer: m, HasPeer: true}); err != nil {
				return
			}
		case rb.HasMsg && !ra.Done:
			rb.HasMsg = false
			if ra, err = a.step(t, steps.Input{Peer: rb.Msg, HasPeer: true}); err != nil {
				return
			}
		default:
			t.Fatalf("both parties wait")
		}
	}
	if c.extraA {
		if _, err = a.step(t, steps.Input{Peer: []byte{1}, HasPeer: true}); err != nil {
			return
		}
	}
	if c.extraB {
		if _, err = b.step(t, steps.Input{Data: c.inB}); err != nil {
			return
		}
	}
	return
}

func ampVec(t testing.TB, o []byte) bits.Vec {
	t.Helper()
	r := wire.Reader{B: o}
	v := r.Vec()
	if err := r.Done(); err != nil {
		t.Fatal(err)
	}
	return v
}

// ampDirect is the Toeplitz product by its definition, y_i = ⊕_j
// s[i−j+n−1]·x_j, a word at a time (amplify.Naive goes bit by bit, too slow
// for many sizes near 10^4 under the race detector): y_i is the parity of
// s[i … i+n−1] ∧ reverse(x).
func ampDirect(x, s bits.Vec, l int) bits.Vec {
	n := x.N
	xr := bits.New(n)
	for j := 0; j < n; j++ {
		xr.Set(n-1-j, x.Get(j))
	}
	sw := append(append([]uint64(nil), s.W...), 0, 0)
	out := bits.New(l)
	for i := 0; i < l; i++ {
		q, r := i>>6, uint(i&63)
		var acc uint64
		for k, w := range xr.W {
			v := sw[q+k] >> r
			if r != 0 {
				v |= sw[q+k+1] << (64 - r)
			}
			acc ^= v & w
		}
		out.Set(i, uint8(mbits.OnesCount64(acc)&1))
	}
	return out
}

// ampSeed returns Alice's seed as the step uses it: the host's seed, or its
// expansion (bits.SeedBytes), as n+ℓ−1 bits.
func ampSeed(seed []byte, n, l int) bits.Vec {
	sb := bits.SeedBytes(seed, "qkdkms/amplify", (n+l+6)/8)
	s, _ := bits.FromBytes(sb, n+l-1)
	return s
}

// TestCAmplifyMatchesGo: sizes around every boundary of the C code (bytes,
// words, the 16-element kernel, transform sizes, the block decomposition),
// short and long seeds; for n ≤ 10^4 the output is also checked against the
// direct product (ampDirect).
func TestCAmplifyMatchesGo(t *testing.T) {
	cr, nr := ampCRunner(t), ampNative(t)
	r := bits.NewRNG([]byte("c-amplify"), "test")
	type size struct{ n, l int }
	sizes := []size{{1, 1}, {2, 1}, {2, 2}, {7, 3}, {8, 8}, {9, 1}, {15, 7}, {16, 16}, {17, 9}, {31, 30}, {63, 1},
		{64, 32}, {65, 64}, {127, 100}, {128, 1}, {129, 129}, {255, 3}, {256, 128}, {257, 200}, {1000, 377},
		{1023, 1023}, {2048, 1024}, {3000, 1234}, {4099, 2048}, {8191, 17}, {10000, 5000}, {10000, 10000}}
	nrand := 60
	if testenv.Race {
		nrand = 35 // the Go side is many times slower
	}
	for len(sizes) < nrand {
		n := 1 + int(r.Uint64()%10000)
		sizes = append(sizes, size{n, 1 + int(r.Uint64()%uint64(n))})
	}
	if !testing.Short() && !testenv.Race {
		// one transform of 2^16 points; then blocks (2, 3 and 4 key blocks)
		sizes = append(sizes, size{300_000, 150_000}, size{349_525, 174_763}, size{349_526, 174_763},
			size{600_001, 300_000}, size{1_000_000, 500_000}, size{1_000_003, 999_999})
	}
	for i, sz := range sizes {
		n, l := sz.n, sz.l
		x := randVec(r, n)
		need := (n + l + 6) / 8
		seeds := [][]byte{nil, []byte("s"), make([]byte, need-1), make([]byte, need), make([]byte, need+5)}
		for _, s := range seeds[2:] {
			for j := range s {
				s[j] = byte(r.Uint64())
			}
		}
		for si, seed := range seeds {
			if n > 20000 && si != 1 && si != 3 {
				continue
			}
			name := fmt.Sprintf("%d/n=%d/l=%d/seed=%d", i, n, l, len(seed))
			c := ampCase{name: name, params: ampU32(uint32(l)), seedA: seed, seedB: []byte("bob"), inA: vecIn(x), inB: vecIn(x)}
			ra, rb, err := runAmp(t, cr, nr, c)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if !bytes.Equal(ra.Output, rb.Output) {
				t.Fatalf("%s: Alice's and Bob's keys differ", name)
			}
			if n <= 10000 && si <= 3 {
				if got, want := ampVec(t, ra.Output), ampDirect(x, ampSeed(seed, n, l), l); !got.Equal(want) {
					t.Fatalf("%s: differs from the direct product in %d bits", name, got.Diff(want))
				}
			}
		}
	}
}

// TestCAmplifyTransformSizes: short keys are hashed by the definition
// (direct in amplify.c); a build without that shortcut (-DDIRECT_MAX=0,
// made here with plugins/c/build.sh) runs the transform on every size, from
// 2-point transforms up, and must agree with Go too.
func TestCAmplifyTransformSizes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the C plugins")
	}
	if _, err := exec.LookPath("clang-19"); err != nil {
		t.Skip("clang-19 not installed")
	}
	root, err := pluginbuild.Root()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(root, "plugins", "c", "build.sh"), dir)
	cmd.Env = append(os.Environ(), "QKD_CFLAGS=-DDIRECT_MAX=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cr, nr := ampCRunnerFrom(t, filepath.Join(dir, "amplify.wasm")), ampNative(t)
	r := bits.NewRNG([]byte("c-sizes"), "test")
	type size struct{ n, l int }
	var sizes []size
	for n := 1; n <= 40; n++ {
		sizes = append(sizes, size{n, 1}, size{n, (n + 1) / 2}, size{n, n})
	}
	for p := 64; p <= 1<<15; p *= 2 {
		for _, n := range []int{p - 1, p, p + 1, 3 * p / 2} {
			sizes = append(sizes, size{n, 1 + int(r.Uint64()%uint64(n))}, size{n, n})
		}
	}
	if !testenv.Race {
		sizes = append(sizes, size{200_000, 100_000}, size{600_001, 300_000})
	}
	for _, sz := range sizes {
		x := ampRandVec(r, sz.n)
		name := fmt.Sprintf("n=%d/l=%d", sz.n, sz.l)
		c := ampCase{name: name, params: ampU32(uint32(sz.l)), seedA: []byte(name), seedB: []byte("b"), inA: vecIn(x), inB: vecIn(x)}
		if _, _, err := runAmp(t, cr, nr, c); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// TestCAmplifyNaive: the C build alone against the O(n·ℓ) definition,
// y_i = ⊕_j s[i−j+n−1]·x_j (amplify.Naive, bit by bit), for n up to 10^4,
// all-ones and all-zero inputs included.
func TestCAmplifyNaive(t *testing.T) {
	cr := ampCRunner(t)
	ctx := context.Background()
	r := bits.NewRNG([]byte("c-naive"), "test")
	ones := func(n int) bits.Vec {
		v := bits.New(n)
		for i := 0; i < n; i++ {
			v.Set(i, 1)
		}
		return v
	}
	for _, n := range []int{1, 5, 6, 100, 999, 4096, 10000} {
		for _, l := range []int{1, (n + 1) / 2, n} {
			for v, x := range []bits.Vec{randVec(r, n), ones(n), bits.New(n)} {
				if n*l > 2e7 && v > 0 {
					continue // the all-ones and all-zero keys of 10^4 bits: ℓ = 1 is enough
				}
				seed := make([]byte, (n+l+6)/8)
				for j := range seed {
					seed[j] = byte(r.Uint64())
				}
				if v == 1 {
					for j := range seed {
						seed[j] = 0xFF
					}
				}
				ia, err := cr.New(ctx, steps.Amplify, steps.Alice, ampU32(uint32(l)), seed)
				if err != nil {
					t.Fatal(err)
				}
				res, err := ia.Step(ctx, steps.Input{Data: vecIn(x)})
				ia.Close(ctx)
				if err != nil || !res.Done {
					t.Fatalf("n=%d ℓ=%d: %v", n, l, err)
				}
				if got, want := ampVec(t, res.Output), amplify.Naive(x, ampSeed(seed, n, l), l); !got.Equal(want) {
					t.Fatalf("n=%d ℓ=%d input %d: differs from the direct product in %d bits", n, l, v, got.Diff(want))
				}
			}
		}
	}
}

// TestCAmplifyErrors: the C build fails exactly where Go fails, and agrees
// where inputs are odd but valid (bits set beyond n in the key vector or
// beyond n+ℓ−1 in Alice's seed bytes).
func TestCAmplifyErrors(t *testing.T) {
	cr, nr := ampCRunner(t), ampNative(t)
	r := bits.NewRNG([]byte("c-errors"), "test")
	x := randVec(r, 1000)
	in := vecIn(x)
	dirty := append([]byte(nil), vecIn(randVec(r, 1003))...)
	dirty[len(dirty)-1] |= 0xF0 // bits 1003…1007 set
	p := ampU32(500)
	cases := []struct {
		c       ampCase
		wantErr bool
	}{
		{ampCase{name: "no params", params: nil, inA: in, inB: in}, true},
		{ampCase{name: "short params", params: []byte{1, 0, 0}, inA: in, inB: in}, true},
		{ampCase{name: "long params", params: []byte{1, 0, 0, 0, 0}, inA: in, inB: in}, true},
		{ampCase{name: "ℓ = 0", params: ampU32(0), inA: in, inB: in}, true},
		{ampCase{name: "ℓ > n", params: ampU32(1001), inA: in, inB: in}, true},
		{ampCase{name: "ℓ = n", params: ampU32(1000), inA: in, inB: in}, false},
		{ampCase{name: "ℓ = 2^32−1", params: ampU32(1<<32 - 1), inA: in, inB: in}, true},
		{ampCase{name: "empty key", params: ampU32(1), inA: vecIn(bits.New(0)), inB: vecIn(bits.New(0))}, true},
		{ampCase{name: "no input", params: p, inA: nil, inB: nil}, true},
		{ampCase{name: "short input", params: p, inA: in[:len(in)-1], inB: in}, true},
		{ampCase{name: "trailing input", params: p, inA: append(append([]byte(nil), in...), 0), inB: in}, true},
		{ampCase{name: "bob short input", params: p, inA: in, inB: in[:3]}, true},
		{ampCase{name: "bits beyond n", params: ampU32(7), seedA: []byte("x"), inA: dirty, inB: dirty}, false},
		{ampCase{name: "seed bits beyond n+ℓ−1", params: ampU32(5), inA: dirty, inB: dirty, seedA: bytes.Repeat([]byte{0xFF}, 300)}, false},
		{ampCase{name: "message: other ℓ", params: p, inA: in, inB: in, tamper: func(m []byte) []byte { m[0]++; return m }}, true},
		{ampCase{name: "message: short", params: p, inA: in, inB: in, tamper: func(m []byte) []byte { return m[:len(m)-1] }}, true},
		{ampCase{name: "message: long", params: p, inA: in, inB: in, tamper: func(m []byte) []byte { return append(m, 0) }}, true},
		{ampCase{name: "message: empty", params: p, inA: in, inB: in, tamper: func(m []byte) []byte { return nil }}, true},
		{ampCase{name: "message: other seed", params: p, inA: in, inB: in, tamper: func(m []byte) []byte { m[9] ^= 4; return m }}, false},
		{ampCase{name: "alice called after done", params: p, inA: in, inB: in, extraA: true}, true},
		{ampCase{name: "bob called after done", params: p, inA: in, inB: in, extraB: true}, true},
	}
	for _, tc := range cases {
		ra, rb, err := runAmp(t, cr, nr, tc.c)
		if (err != nil) != tc.wantErr {
			t.Fatalf("%s: error %v, want error %v", tc.c.name, err, tc.wantErr)
		}
		if err == nil {
			t.Logf("%s: alice %d bytes, bob %d bytes", tc.c.name, len(ra.Output), len(rb.Output))
		}
	}
	// n+ℓ−1 = 2^26 + 1 is refused (the bound of every version of the
	// step), 2^26 accepted (Alice alone: the hash of 2^25+1 bits)
	if !testing.Short() && !testenv.Race {
		over := vecIn(bits.New(1<<25 + 2))
		if _, _, err := runAmp(t, cr, nr, ampCase{name: "over", params: ampU32(1 << 25), inA: over, inB: over}); err == nil {
			t.Fatal("n+ℓ−1 = 2^26+1 accepted")
		}
		ctx := context.Background()
		ac, _ := cr.New(ctx, steps.Amplify, steps.Alice, ampU32(1<<25), []byte("a"))
		an, _ := nr.New(ctx, steps.Amplify, steps.Alice, ampU32(1<<25), []byte("a"))
		alice := &ampParty{name: "alice at 2^26", c: ac, n: an}
		if _, err := alice.step(t, steps.Input{Data: vecIn(ampRandVec(r, 1<<25+1))}); err != nil {
			t.Fatal(err)
		}
		ac.Close(ctx)
	}
	// Alice given a message first, Bob a message before his input
	ctx := context.Background()
	for _, role := range []steps.Role{steps.Alice, steps.Bob} {
		pc, _ := cr.New(ctx, steps.Amplify, role, p, nil)
		pn, _ := nr.New(ctx, steps.Amplify, role, p, nil)
		party := &ampParty{name: role.String(), c: pc, n: pn}
		if _, err := party.step(t, steps.Input{Peer: []byte{0}, HasPeer: true}); err == nil {
			t.Fatalf("%s: a message before the input was accepted", role)
		}
		pc.Close(ctx)
	}
}
