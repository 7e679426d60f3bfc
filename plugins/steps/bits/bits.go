// Package bits holds the bit-packed vectors, the deterministic random number
// generators and helpers shared by the post-processing steps. Everything here
// compiles to GOOS=wasip1 GOARCH=wasm and gives the same results there as
// natively.
//
// Bit i of a vector lives in word i/64 at bit position i%64; as bytes it is
// byte i/8, bit i%8 (least significant bit first).
package bits

import (
	"encoding/binary"
	"errors"
	"fmt"
	mbits "math/bits"
)

// ErrFormat: a byte encoding of a vector is malformed.
var ErrFormat = errors.New("bits: malformed vector")

// Vec is a bit vector of N bits packed into 64-bit words. Bits beyond N in
// the last word are always zero.
type Vec struct {
	W []uint64
	N int
}

// New returns a zero vector of n bits.
func New(n int) Vec { return Vec{W: make([]uint64, (n+63)/64), N: n} }

// Get returns bit i (0 or 1).
func (v Vec) Get(i int) uint8 { return uint8(v.W[i>>6] >> (uint(i) & 63) & 1) }

// Set sets bit i to b (0 or 1).
func (v Vec) Set(i int, b uint8) {
	m := uint64(1) << (uint(i) & 63)
	if b&1 == 1 {
		v.W[i>>6] |= m
	} else {
		v.W[i>>6] &^= m
	}
}

// Flip inverts bit i.
func (v Vec) Flip(i int) { v.W[i>>6] ^= uint64(1) << (uint(i) & 63) }

// Clone returns a deep copy.
func (v Vec) Clone() Vec { return Vec{W: append([]uint64(nil), v.W...), N: v.N} }

// Equal reports whether two vectors hold the same bits.
func (v Vec) Equal(o Vec) bool {
	if v.N != o.N {
		return false
	}
	for i := range v.W {
		if v.W[i] != o.W[i] {
			return false
		}
	}
	return true
}

// Ones counts the set bits.
func (v Vec) Ones() int {
	c := 0
	for _, w := range v.W {
		c += mbits.OnesCount64(w)
	}
	return c
}

// Parity returns the parity of bits [lo, hi).
func (v Vec) Parity(lo, hi int) uint8 {
	if hi <= lo {
		return 0
	}
	wl, wh := lo>>6, (hi-1)>>6
	ml := ^uint64(0) << (uint(lo) & 63)
	mh := ^uint64(0) >> (63 - (uint(hi-1) & 63))
	if wl == wh {
		return uint8(mbits.OnesCount64(v.W[wl]&ml&mh) & 1)
	}
	x := v.W[wl] & ml
	// eight words per iteration: in WASM each loop back-edge costs a
	// termination check
	mid := v.W[wl+1 : wh]
	for len(mid) >= 8 {
		m := mid[:8:8]
		x ^= m[0] ^ m[1] ^ m[2] ^ m[3] ^ m[4] ^ m[5] ^ m[6] ^ m[7]
		mid = mid[8:]
	}
	for _, w := range mid {
		x ^= w
	}
	x ^= v.W[wh] & mh
	return uint8(mbits.OnesCount64(x) & 1)
}

// Diff counts the positions where v and o differ (same length required).
func (v Vec) Diff(o Vec) int {
	c := 0
	for i := range v.W {
		c += mbits.OnesCount64(v.W[i] ^ o.W[i])
	}
	return c
}

// Bytes returns the bits as ceil(N/8) bytes, LSB first.
func (v Vec) Bytes() []byte {
	out := make([]byte, (v.N+7)/8)
	var tmp [8]byte
	for i, w := range v.W {
		off := i * 8
		if off+8 <= len(out) {
			binary.LittleEndian.PutUint64(out[off:], w)
			continue
		}
		binary.LittleEndian.PutUint64(tmp[:], w)
		copy(out[off:], tmp[:])
	}
	return out
}

// FromBytes builds an n-bit vector from LSB-first bytes (at least ceil(n/8)).
// Bits beyond n are cleared.
func FromBytes(b []byte, n int) (Vec, error) {
	if n < 0 || len(b) < (n+7)/8 {
		return Vec{}, fmt.Errorf("%w: %d bytes for %d bits", ErrFormat, len(b), n)
	}
	v := New(n)
	var tmp [8]byte
	for i := range v.W {
		off := i * 8
		if off+8 <= len(b) {
			v.W[i] = binary.LittleEndian.Uint64(b[off:])
		} else {
			tmp = [8]byte{}
			copy(tmp[:], b[off:])
			v.W[i] = binary.LittleEndian.Uint64(tmp[:])
		}
	}
	v.clearTail()
	return v, nil
}

func (v Vec) clearTail() {
	if r := uint(v.N) & 63; r != 0 {
		v.W[len(v.W)-1] &= (uint64(1) << r) - 1
	}
}

// FromBits builds a vector from one byte (0/1) per bit.
func FromBits(b []uint8) Vec {
	v := New(len(b))
	for i, x := range b {
		if x&1 == 1 {
			v.W[i>>6] |= uint64(1) << (uint(i) & 63)
		}
	}
	return v
}
