package bits

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
)

// RNG is xoshiro256**: fast, deterministic, identical natively and in WASM.
// It is used for public randomness that needs no cryptographic strength
// (Cascade permutations). Seeds are hashed with SHA-256 first.
type RNG struct{ s [4]uint64 }

// NewRNG derives a generator from seed bytes and a domain label.
func NewRNG(seed []byte, label string) *RNG {
	h := sha256.New()
	h.Write([]byte(label))
	h.Write([]byte{0})
	h.Write(seed)
	d := h.Sum(nil)
	r := &RNG{}
	for i := range r.s {
		r.s[i] = binary.LittleEndian.Uint64(d[i*8:])
	}
	if r.s == [4]uint64{} {
		r.s[0] = 1
	}
	return r
}

// Uint64 returns the next 64 random bits.
func (r *RNG) Uint64() uint64 {
	s := &r.s
	res := rotl(s[1]*5, 7) * 9
	t := s[1] << 17
	s[2] ^= s[0]
	s[3] ^= s[1]
	s[1] ^= s[2]
	s[0] ^= s[3]
	s[2] ^= t
	s[3] = rotl(s[3], 45)
	return res
}

func rotl(x uint64, k uint) uint64 { return x<<k | x>>(64-k) }

// Perm returns a uniformly random permutation of [0, n) (Fisher–Yates,
// Lemire's multiply-shift bounded draws on 32-bit halves).
func (r *RNG) Perm(n int) []uint32 {
	p := make([]uint32, n)
	for i := range p {
		p[i] = uint32(i)
	}
	// Two draws per xoshiro output (low then high 32 bits), the generator
	// inlined: in WASM every call and loop back-edge costs a termination
	// check, so this loop runs once per two positions.
	s0, s1, s2, s3 := r.s[0], r.s[1], r.s[2], r.s[3]
	i := n - 1
	for ; i >= 2; i -= 2 {
		res := rotl(s1*5, 7) * 9
		t := s1 << 17
		s2 ^= s0
		s3 ^= s1
		s1 ^= s2
		s0 ^= s3
		s2 ^= t
		s3 = rotl(s3, 45)
		j := int((uint64(uint32(res)) * uint64(i+1)) >> 32)
		p[i], p[j] = p[j], p[i]
		j = int(((res >> 32) * uint64(i)) >> 32)
		p[i-1], p[j] = p[j], p[i-1]
	}
	r.s = [4]uint64{s0, s1, s2, s3}
	if i == 1 {
		x := uint32(r.Uint64())
		j := int((uint64(x) * 2) >> 32)
		p[1], p[j] = p[j], p[1]
	}
	return p
}

// Stream returns nbytes of ChaCha8 output keyed by SHA-256(label, seed): a
// cryptographic expansion used for public hash seeds when the host gave a
// seed shorter than the hash needs.
func Stream(seed []byte, label string, nbytes int) []byte {
	k := sha256.Sum256(append([]byte(label+"\x00"), seed...))
	c := rand.NewChaCha8(k)
	out := make([]byte, nbytes)
	_, _ = c.Read(out)
	return out
}

// SeedBytes returns exactly nbytes of seed material: the host's seed itself
// when it is long enough, else its ChaCha8 expansion.
func SeedBytes(seed []byte, label string, nbytes int) []byte {
	if len(seed) >= nbytes {
		return append([]byte(nil), seed[:nbytes]...)
	}
	return Stream(seed, label, nbytes)
}
