// Package auth authenticates the classical channel of a QKD link with
// Wegman–Carter tags: an ε-almost-Δ-universal polynomial hash of the message
// under a long-lived hash key, encrypted with a fresh one-time pad per
// message. The pads are secret key bits: a pre-shared secret at start, then
// key material reserved from earlier QKD sessions. Every pad is used once;
// the bits consumed are counted.
//
// The hash is evaluation of the message, as a polynomial of 56-bit chunks,
// at two independent secret points modulo the Mersenne prime p = 2^61 − 1.
// For a message of L chunks the collision probability of one lane is at most
// (L+1)/p; the two lanes are independent, so a forgery succeeds with
// probability at most ((L+1)/2^61)^2 per message — about 2^-80 for 1 MiB.
package auth

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
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
	// ErrNoPad: the secret-key pool for pads is exhausted.
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

// Sum hashes msg under the key with a length-prefixed encoding, so messages
// differing only by trailing zeros hash differently.
func (h Hash) Sum(seq uint64, msg []byte) [2]uint64 {
	var acc [2]uint64
	add := func(c uint64) {
		for i := range acc {
			acc[i] = mulmod(addmod(acc[i], c), h.k[i])
		}
	}
	add(seq & ((1 << 56) - 1))
	add(uint64(len(msg)))
	var buf [8]byte
	for off := 0; off < len(msg); off += chunk {
		end := min(off+chunk, len(msg))
		clear(buf[:])
		copy(buf[:], msg[off:end])
		add(binary.LittleEndian.Uint64(buf[:]))
	}
	return acc
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

// PadSource supplies one-time pads: fresh secret bytes shared with the peer,
// taken in the same order on both sides.
type PadSource interface {
	// Take returns the next n secret bytes or ErrNoPad.
	Take(n int) ([]byte, error)
}

// Pool is an in-memory PadSource that can be refilled. It zeroes what it
// hands out from its own storage.
type Pool struct {
	mu       sync.Mutex
	buf      []byte
	consumed int64
}

// NewPool starts a pool with secret bytes (copied).
func NewPool(secret []byte) *Pool { return &Pool{buf: append([]byte(nil), secret...)} }

// Take implements PadSource.
func (p *Pool) Take(n int) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) < n {
		return nil, ErrNoPad
	}
	out := append([]byte(nil), p.buf[:n]...)
	clear(p.buf[:n])
	p.buf = p.buf[n:]
	p.consumed += int64(n)
	return out, nil
}

// Add appends fresh secret bytes (reserved from a QKD session).
func (p *Pool) Add(secret []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, secret...)
}

// Available is the unused pad material in bytes.
func (p *Pool) Available() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.buf)
}

// Consumed is the pad material used so far, in bytes.
func (p *Pool) Consumed() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.consumed
}

// Tagger produces or checks the tags of one direction of a channel: message
// number seq is tagged with Sum(seq, msg) + pad_seq (mod p, per lane).
type Tagger struct {
	mu   sync.Mutex
	hash Hash
	pads PadSource
	seq  uint64
}

// NewTagger uses hash for every message and pads from src, one per message.
func NewTagger(hash Hash, src PadSource) *Tagger { return &Tagger{hash: hash, pads: src} }

// Tag returns the tag of the next message.
func (t *Tagger) Tag(msg []byte) ([TagSize]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tag, err := t.next(msg)
	if err == nil {
		t.seq++
	}
	return tag, err
}

// Verify checks the tag of the next message. A failed check still consumes
// the pad: the channel must be torn down after ErrBadTag.
func (t *Tagger) Verify(msg []byte, tag []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	want, err := t.next(msg)
	if err != nil {
		return err
	}
	t.seq++
	if len(tag) != TagSize || subtle.ConstantTimeCompare(want[:], tag) != 1 {
		return ErrBadTag
	}
	return nil
}

func (t *Tagger) next(msg []byte) ([TagSize]byte, error) {
	var tag [TagSize]byte
	pad, err := t.pads.Take(PadSize)
	if err != nil {
		return tag, err
	}
	defer clear(pad)
	sum := t.hash.Sum(t.seq, msg)
	for i := range sum {
		r := binary.LittleEndian.Uint64(pad[8*i:]) % p61
		binary.LittleEndian.PutUint64(tag[8*i:], addmod(sum[i], r))
	}
	return tag, nil
}
