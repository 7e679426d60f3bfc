// Package auth authenticates the classical channel of a QKD link with
// Wegman–Carter tags: an ε-almost-Δ-universal polynomial hash under a
// long-lived hash key, encrypted with a one-time pad. The pads are secret
// key bits: a pre-shared secret at start, then key material reserved from
// earlier QKD sessions; every pad is used once.
//
// A session's whole transcript is authenticated at its end, once per
// direction (delayed authentication): each party tags everything it sent and
// checks the peer's tag over everything it received, and the session's key
// is used only when both checks pass. That costs 2 × PadSize bytes of key
// per session however many messages the session exchanged.
//
// The hash is evaluation of the message, as a polynomial of 56-bit chunks,
// at two independent secret points modulo the Mersenne prime p = 2^61 − 1.
// For a transcript of L chunks the collision probability of one lane is at
// most (L+1)/p; the two lanes are independent, so a forgery succeeds with
// probability at most ((L+1)/2^61)^2 — about 2^-76 for 16 MiB.
package auth

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

const (
	p61 = (1 << 61) - 1
	// TagSize is the tag length in bytes (two 61-bit lanes in 8 bytes each).
	TagSize = 16
	// PadSize is the secret key consumed per message, in bytes.
	PadSize = 16
	// HashKeySize is the secret hash key length in bytes.
	HashKeySize = 16
	chunk       = 7 // bytes per polynomial coefficient (56 bits < 61)
)

var (
	// ErrBadTag: the message was altered or not sent by the peer.
	ErrBadTag = errors.New("auth: authentication tag mismatch")
	// ErrNoPad: the secret-key stream for pads is exhausted.
	ErrNoPad = errors.New("auth: out of authentication key")
)

// Hash is the two-lane polynomial hash under a secret key.
type Hash struct{ k [2]uint64 }

// NewHash takes a 16-byte secret key.
func NewHash(key []byte) (Hash, error) {
	if len(key) != HashKeySize {
		return Hash{}, fmt.Errorf("auth: hash key must be %d bytes, got %d", HashKeySize, len(key))
	}
	var h Hash
	for i := range h.k {
		h.k[i] = binary.LittleEndian.Uint64(key[8*i:]) % p61
		if h.k[i] == 0 {
			h.k[i] = 1 // a zero point would hash everything to the constant term
		}
	}
	return h, nil
}

// Sum hashes one message.
func (h Hash) Sum(msg []byte) [2]uint64 {
	t := h.NewTranscript()
	t.Add(msg)
	return t.sum()
}

// NewTranscript starts a running hash over a sequence of messages.
func (h Hash) NewTranscript() *Transcript {
	t := &Transcript{h: h}
	t.add(1) // a non-zero leading coefficient: Horner evaluation would absorb leading zeros
	return t
}

// Transcript hashes a sequence of messages incrementally. The encoding —
// a leading 1, then per message its length and its 56-bit chunks, then the
// message count — is injective, so distinct sequences are distinct
// polynomials and collide with probability at most (L+1)/p per lane.
type Transcript struct {
	h    Hash
	acc  [2]uint64
	msgs uint64
}

func (t *Transcript) add(c uint64) {
	for i := range t.acc {
		t.acc[i] = mulmod(addmod(t.acc[i], c), t.h.k[i])
	}
}

// Add appends one message.
func (t *Transcript) Add(msg []byte) {
	t.msgs++
	t.add(uint64(len(msg)))
	var buf [8]byte
	for off := 0; off < len(msg); off += chunk {
		end := min(off+chunk, len(msg))
		clear(buf[:])
		copy(buf[:], msg[off:end])
		t.add(binary.LittleEndian.Uint64(buf[:]))
	}
}

func (t *Transcript) sum() [2]uint64 {
	c := *t
	c.add(t.msgs)
	return c.acc
}

// Tag is the Wegman–Carter tag of the transcript so far under a one-time
// pad of PadSize bytes: hash + pad (mod p, per lane).
func (t *Transcript) Tag(pad []byte) ([TagSize]byte, error) {
	var tag [TagSize]byte
	if len(pad) != PadSize {
		return tag, fmt.Errorf("auth: pad must be %d bytes, got %d", PadSize, len(pad))
	}
	sum := t.sum()
	for i := range sum {
		r := binary.LittleEndian.Uint64(pad[8*i:]) % p61
		binary.LittleEndian.PutUint64(tag[8*i:], addmod(sum[i], r))
	}
	return tag, nil
}

// Verify checks a tag of the transcript under pad in constant time.
func (t *Transcript) Verify(pad, tag []byte) error {
	want, err := t.Tag(pad)
	if err != nil {
		return err
	}
	if len(tag) != TagSize || subtle.ConstantTimeCompare(want[:], tag) != 1 {
		return ErrBadTag
	}
	return nil
}

func addmod(a, b uint64) uint64 {
	s := a + b
	s = (s & p61) + (s >> 61)
	if s >= p61 {
		s -= p61
	}
	return s
}

func mulmod(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	// a*b = hi*2^64 + lo; 2^61 ≡ 1 (mod p), so fold at bit 61.
	r := (lo & p61) + (lo >> 61) + (hi << 3)
	r = (r & p61) + (r >> 61)
	if r >= p61 {
		r -= p61
	}
	return r
}
