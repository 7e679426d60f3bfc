package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"math/big"
	"sync"
	"testing"

	"qkdkms/quantum"
)

func random(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestArithmeticAgainstBigInt checks the Mersenne reduction against math/big.
func TestArithmeticAgainstBigInt(t *testing.T) {
	p := new(big.Int).SetUint64(p61)
	cases := [][2]uint64{{0, 0}, {1, p61 - 1}, {p61 - 1, p61 - 1}, {1 << 60, 1 << 60}, {123456789, 987654321}}
	for range 2000 {
		b := random(t, 16)
		x := new(big.Int).SetBytes(b[:8])
		y := new(big.Int).SetBytes(b[8:])
		cases = append(cases, [2]uint64{x.Mod(x, p).Uint64(), y.Mod(y, p).Uint64()})
	}
	for _, c := range cases {
		a, b := new(big.Int).SetUint64(c[0]), new(big.Int).SetUint64(c[1])
		mul := new(big.Int).Mod(new(big.Int).Mul(a, b), p).Uint64()
		add := new(big.Int).Mod(new(big.Int).Add(a, b), p).Uint64()
		if got := mulmod(c[0], c[1]); got != mul {
			t.Fatalf("mulmod(%d,%d) = %d, want %d", c[0], c[1], got, mul)
		}
		if got := addmod(c[0], c[1]); got != add {
			t.Fatalf("addmod(%d,%d) = %d, want %d", c[0], c[1], got, add)
		}
	}
}

func hash(t *testing.T) Hash {
	t.Helper()
	h, err := NewHash(random(t, HashKeySize))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestTranscriptsThatMustDiffer: encodings a naive hash would confuse.
func TestTranscriptsThatMustDiffer(t *testing.T) {
	h := hash(t)
	seqs := map[string][][]byte{
		"empty":             {},
		"one empty message": {{}},
		"two empty":         {{}, {}},
		"zero byte":         {{0}},
		"two zero bytes":    {{0, 0}},
		"split a|b":         {[]byte("a"), []byte("b")},
		"joined ab":         {[]byte("ab")},
		"seven zeros":       {make([]byte, 7)},
		"eight zeros":       {make([]byte, 8)},
	}
	seen := map[[2]uint64]string{}
	for name, msgs := range seqs {
		tr := h.NewTranscript()
		for _, m := range msgs {
			tr.Add(m)
		}
		s := tr.sum()
		if other, dup := seen[s]; dup {
			t.Fatalf("%q and %q hash alike", name, other)
		}
		seen[s] = name
	}
}

func TestTagForgeries(t *testing.T) {
	h := hash(t)
	pad := random(t, PadSize)
	msg := []byte("sift: bases 0101110")
	good := h.NewTranscript()
	good.Add(msg)
	tag, err := good.Tag(pad)
	if err != nil {
		t.Fatal(err)
	}
	if err := good.Verify(pad, tag[:]); err != nil {
		t.Fatalf("genuine tag refused: %v", err)
	}
	cases := []struct {
		name string
		msg  []byte
		tag  []byte
		pad  []byte
	}{
		{"bit flip in message", []byte("sift: bases 0101111"), tag[:], pad},
		{"trailing zero", append(append([]byte(nil), msg...), 0), tag[:], pad},
		{"bit flip in tag", msg, append([]byte{tag[0] ^ 1}, tag[1:]...), pad},
		{"short tag", msg, tag[:8], pad},
		{"other pad", msg, tag[:], random(t, PadSize)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr := h.NewTranscript()
			tr.Add(c.msg)
			if err := tr.Verify(c.pad, c.tag); !errors.Is(err, ErrBadTag) {
				t.Fatalf("forgery accepted or wrong error: %v", err)
			}
		})
	}
}

// tamper flips a bit of the n-th message passing through.
type tamper struct {
	quantum.Channel
	mu sync.Mutex
	n  int
}

func (c *tamper) Send(ctx context.Context, msg []byte) error {
	c.mu.Lock()
	c.n--
	if c.n == 0 {
		msg = append([]byte(nil), msg...)
		msg[0] ^= 0x80
	}
	c.mu.Unlock()
	return c.Channel.Send(ctx, msg)
}

func TestChannelConfirm(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tamperN int // 0 = no tampering, else flip a bit in Alice's n-th message
		wantBad bool
	}{
		{"honest", 0, false},
		{"man in the middle flips a bit", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hash(t)
			ab, ba := random(t, PadSize), random(t, PadSize)
			pa, pb := quantum.Pipe()
			defer pa.Close()
			var aliceInner quantum.Channel = pa
			if tc.tamperN > 0 {
				aliceInner = &tamper{Channel: pa, n: tc.tamperN}
			}
			alice, bob := NewChannel(aliceInner, h), NewChannel(pb, h)
			ctx := context.Background()
			msgs := [][]byte{[]byte("hello"), bytes.Repeat([]byte{7}, 10000), {}}
			errs := make(chan error, 2)
			go func() {
				for _, m := range msgs {
					if err := alice.Send(ctx, m); err != nil {
						errs <- err
						return
					}
				}
				if _, err := alice.Recv(ctx); err != nil {
					errs <- err
					return
				}
				errs <- alice.Confirm(ctx, ab, ba)
			}()
			go func() {
				for range msgs {
					if _, err := bob.Recv(ctx); err != nil {
						errs <- err
						return
					}
				}
				if err := bob.Send(ctx, []byte("ack")); err != nil {
					errs <- err
					return
				}
				errs <- bob.Confirm(ctx, ba, ab)
			}()
			bad := 0
			for range 2 {
				if err := <-errs; err != nil {
					if !errors.Is(err, ErrBadTag) {
						t.Fatalf("unexpected error: %v", err)
					}
					bad++
				}
			}
			if tc.wantBad && bad == 0 {
				t.Fatal("tampering went unnoticed")
			}
			if !tc.wantBad && bad != 0 {
				t.Fatalf("honest exchange refused (%d sides)", bad)
			}
		})
	}
}
