package auth

import (
	"bytes"
	"crypto/rand"
	"errors"
	"math/big"
	"testing"
)

func key(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMulmodAgainstBigInt checks the Mersenne reduction against math/big.
func TestMulmodAgainstBigInt(t *testing.T) {
	p := new(big.Int).SetUint64(p61)
	cases := [][2]uint64{{0, 0}, {1, p61 - 1}, {p61 - 1, p61 - 1}, {1 << 60, 1 << 60}, {123456789, 987654321}}
	for i := 0; i < 1000; i++ {
		b := key(t, 16)
		cases = append(cases, [2]uint64{uint64(b[0])<<53 ^ uint64(b[1])<<40 ^ uint64(b[2])%p61, (uint64(b[3])<<50 | uint64(b[4])) % p61})
	}
	for _, c := range cases {
		want := new(big.Int).Mul(new(big.Int).SetUint64(c[0]), new(big.Int).SetUint64(c[1]))
		want.Mod(want, p)
		if got := mulmod(c[0], c[1]); got != want.Uint64() {
			t.Fatalf("mulmod(%d,%d) = %d, want %d", c[0], c[1], got, want.Uint64())
		}
		wantAdd := new(big.Int).Add(new(big.Int).SetUint64(c[0]), new(big.Int).SetUint64(c[1]))
		wantAdd.Mod(wantAdd, p)
		if got := addmod(c[0], c[1]); got != wantAdd.Uint64() {
			t.Fatalf("addmod(%d,%d) = %d, want %d", c[0], c[1], got, wantAdd.Uint64())
		}
	}
}

func pair(t *testing.T, pads int) (alice, bob *Tagger) {
	t.Helper()
	h, err := NewHash(key(t, HashKeySize))
	if err != nil {
		t.Fatal(err)
	}
	secret := key(t, pads*PadSize)
	return NewTagger(h, NewPool(secret)), NewTagger(h, NewPool(secret))
}

func TestTagVerify(t *testing.T) {
	a, b := pair(t, 4)
	msgs := [][]byte{[]byte("hello"), {}, bytes.Repeat([]byte{0xAB}, 100000), []byte("hello\x00")}
	for _, m := range msgs {
		tag, err := a.Tag(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Verify(m, tag[:]); err != nil {
			t.Fatalf("genuine message of %d bytes refused: %v", len(m), err)
		}
	}
	if _, err := a.Tag([]byte("one too many")); !errors.Is(err, ErrNoPad) {
		t.Fatalf("want ErrNoPad when pads run out, got %v", err)
	}
}

func TestForgeriesRefused(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(msg, tag []byte) ([]byte, []byte)
	}{
		{"bit flip in message", func(m, g []byte) ([]byte, []byte) { m[3] ^= 1; return m, g }},
		{"bit flip in tag", func(m, g []byte) ([]byte, []byte) { g[0] ^= 1; return m, g }},
		{"trailing zero appended", func(m, g []byte) ([]byte, []byte) { return append(m, 0), g }},
		{"truncated", func(m, g []byte) ([]byte, []byte) { return m[:len(m)-1], g }},
		{"short tag", func(m, g []byte) ([]byte, []byte) { return m, g[:8] }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := pair(t, 1)
			msg := []byte("sift: bases 0101110")
			tag, err := a.Tag(msg)
			if err != nil {
				t.Fatal(err)
			}
			m, g := c.mutate(append([]byte(nil), msg...), append([]byte(nil), tag[:]...))
			if err := b.Verify(m, g); !errors.Is(err, ErrBadTag) {
				t.Fatalf("forgery accepted or wrong error: %v", err)
			}
		})
	}
}

func TestReplayAndReorderRefused(t *testing.T) {
	a, b := pair(t, 3)
	m1, m2 := []byte("first"), []byte("second")
	if _, err := a.Tag(m1); err != nil {
		t.Fatal(err)
	}
	t2, err := a.Tag(m2)
	if err != nil {
		t.Fatal(err)
	}
	// Bob has not seen the first message: the second one, delivered first,
	// is checked against pad 0 and must fail.
	if err := b.Verify(m2, t2[:]); !errors.Is(err, ErrBadTag) {
		t.Fatalf("reordered message accepted: %v", err)
	}
}

func TestPoolAccounting(t *testing.T) {
	p := NewPool(make([]byte, 40))
	if _, err := p.Take(16); err != nil {
		t.Fatal(err)
	}
	p.Add(make([]byte, 8))
	if p.Available() != 32 || p.Consumed() != 16 {
		t.Fatalf("available %d consumed %d", p.Available(), p.Consumed())
	}
	if _, err := p.Take(33); !errors.Is(err, ErrNoPad) {
		t.Fatalf("overdraw: %v", err)
	}
}
